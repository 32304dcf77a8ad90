-- Who caused each event: the sender's validated AMQP user_id, 'anonymous' for a
-- command without one, NULL for statusek itself (a deadline). Older rows stay NULL.
ALTER TABLE events ADD COLUMN actor text;
