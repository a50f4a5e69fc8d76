-- The leases a target holds, for the lease query's per-target count: without it that count read
-- every pending delivery, so a dead target's backlog of retries made every lease, for every
-- tenant, as slow as the backlog was long.
CREATE INDEX webhook_deliveries_leased ON webhook_deliveries (target_id, lease_until)
    WHERE status = 'pending' AND lease_until IS NOT NULL;
