# One image for every flowplan service.
#   default:   flowplan --help
#   set-up:    flowplan setup
#   services:  python -m services.quota | python -m services.ingress
# Configuration comes from FLOWPLAN_* environment variables (see deploy/README.md).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

RUN groupadd --system --gid 10001 flowplan \
 && useradd --system --uid 10001 --gid flowplan --create-home --home-dir /home/flowplan flowplan

# Build from a scratch folder and install into site-packages (not editable), then
# remove the sources: the services run from the installed package, package data
# (*.json catalogs, *.sql migrations) included.
WORKDIR /src
COPY pyproject.toml ./
COPY proto/ proto/
COPY libs/ libs/
COPY services/ services/
RUN pip install --no-cache-dir . \
 && cd / && rm -rf /src

# Run from a folder without the sources so `python -m services.<name>` imports the
# installed package.
WORKDIR /home/flowplan
USER flowplan

# Listen on all interfaces inside the container (the library default is 127.0.0.1).
ENV FLOWPLAN_HOST=0.0.0.0
# gateway, ingress, quota, keys, billing, refund (each: its API or /healthz and /metrics), simulator
EXPOSE 8080 8081 8082 8083 8084 8085 8090

CMD ["flowplan", "--help"]
