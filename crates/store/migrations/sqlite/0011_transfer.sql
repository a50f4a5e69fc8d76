-- A call's hand-over to a person (the conversation's `transfer`), as JSON:
-- {target, number, method, status, at}; NULL when none was tried.
ALTER TABLE calls ADD COLUMN transfer TEXT;
