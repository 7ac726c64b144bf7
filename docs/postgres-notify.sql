-- Sends each row change of a table to a channel as JSON, for wisp's
-- `postgres` triggers: {"op": "INSERT", "table": "orders", "row": {...}}.
-- A notification carries at most 8000 bytes; for wide rows, send the key
-- (`'id', NEW.id`) instead of the whole row.
--
--   CREATE TRIGGER orders_changed AFTER INSERT OR UPDATE OR DELETE ON orders
--     FOR EACH ROW EXECUTE FUNCTION wisp_notify('orders');
CREATE OR REPLACE FUNCTION wisp_notify() RETURNS trigger AS $$
BEGIN
  PERFORM pg_notify(
    TG_ARGV[0],
    json_build_object(
      'op', TG_OP,
      'table', TG_TABLE_NAME,
      'row', row_to_json(CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END)
    )::text
  );
  RETURN NULL;
END
$$ LANGUAGE plpgsql;
