-- Each device's own policy as rum-aggregator read it from the device (DevicePoliciesRead): the
-- policy, where it came from (device, or assumed with the reason), the device's own next ACK
-- deadline and last ACK, and when it was read (renewal-scheduler's deadlines::PolicyDoc as
-- JSON). NULL: never read; Cisco's default applies. A change of it is an input of the deadline.
ALTER TABLE sched.devices ADD COLUMN policy JSONB;

CREATE OR REPLACE FUNCTION sched.devices_dirty() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.first_seen_at IS DISTINCT FROM OLD.first_seen_at
     OR NEW.last_upload_at IS DISTINCT FROM OLD.last_upload_at
     OR NEW.last_ack_at IS DISTINCT FROM OLD.last_ack_at
     OR NEW.network_license IS DISTINCT FROM OLD.network_license
     OR NEW.dna_tier IS DISTINCT FROM OLD.dna_tier
     OR NEW.model IS DISTINCT FROM OLD.model
     OR NEW.is_cube IS DISTINCT FROM OLD.is_cube
     OR NEW.out_of_compliance IS DISTINCT FROM OLD.out_of_compliance
     OR NEW.policy IS DISTINCT FROM OLD.policy THEN
    NEW.assessed := false;
  END IF;
  RETURN NEW;
END $$;
