"""quota: projects usage into 5-hour, weekly and monthly windows and answers admission checks."""
