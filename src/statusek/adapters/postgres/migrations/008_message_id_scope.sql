-- Idempotency records are scoped by sender and remember what the command was
-- (docs/guarantees.md): the same message_id from two users are two commands, and a message_id reused
-- for a different command is refused (MESSAGE_ID_REUSED) instead of answered with the first
-- command's reply. Records written before this migration have sender '' and no fingerprint:
-- a repeat of them is still answered with its stored reply.
ALTER TABLE processed_messages
    ADD COLUMN sender text NOT NULL DEFAULT '',
    ADD COLUMN fingerprint text;
ALTER TABLE processed_messages DROP CONSTRAINT processed_messages_pkey;
ALTER TABLE processed_messages ADD PRIMARY KEY (sender, message_id);
