-- Each account's partition of the event log (libs/eventlog/subjects.partition_for), so that an
-- instance taking a partition over reads that partition's accounts only (and their rows in the
-- other tables, by account), not every account. The projection fills it for new accounts; quota
-- fills the rows from before at its start with quota.partition_for (FLOWPLAN_PARTITIONS is not
-- known here), the same FNV-1a 32 modulo n as the stream's subject transform.
ALTER TABLE quota.accounts ADD COLUMN partition integer;
CREATE INDEX accounts_partition ON quota.accounts (partition);

CREATE FUNCTION quota.partition_for(account text, partitions integer) RETURNS integer
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    bytes bytea := convert_to(account, 'UTF8');
    h bigint := 2166136261;
BEGIN
    FOR i IN 0 .. length(bytes) - 1 LOOP
        h := ((h # get_byte(bytes, i)) * 16777619) % 4294967296;
    END LOOP;
    RETURN h % partitions;
END
$$;
