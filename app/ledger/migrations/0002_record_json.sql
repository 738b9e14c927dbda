-- A closure whose record holds a U+0000 (allowed in metadata since SPEC
-- revision 3) is stored and billed: jsonb cannot hold U+0000, so `record`
-- has it replaced by U+FFFD, and record_json keeps the record exactly as
-- delivered, as JSON text (U+0000 written \u0000). NULL when `record` is exact.
ALTER TABLE closures ADD COLUMN record_json text;
ALTER TABLE closure_conflicts ADD COLUMN record_json text;
