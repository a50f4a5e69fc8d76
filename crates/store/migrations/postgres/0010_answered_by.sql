-- Who picked up an answered call (the answering-machine detector's verdict): human, machine or
-- unknown; NULL for a call never answered.
ALTER TABLE calls ADD COLUMN answered_by TEXT;
