-- The trunk option `srtp` (issue 18): 'off' (plain RTP/AVP) or 'required' (RTP/SAVP with SDES
-- keys, RFC 4568; the API accepts it only on a TLS trunk, as the keys travel in the SDP).
-- Trunks made before it carry plain RTP, as they always did.
ALTER TABLE trunks ADD COLUMN srtp TEXT NOT NULL DEFAULT 'off';
