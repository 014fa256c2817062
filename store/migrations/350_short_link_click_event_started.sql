-- When the `ClickEventWorkflow` of a link's first click was started (or found started): until
-- then each click tries to start it (api/services/links.py), so that a first click while
-- Temporal was unreachable, or whose API process stopped before the start, still has its
-- event posted. NULL for links clicked before this column: a click then starts it only while
-- no post was made (`webhook_attempts` 0), and Temporal refuses a second run of its id.
-- Nullable with no default: adding it rewrites no row.
ALTER TABLE short_links ADD COLUMN click_event_started_at timestamptz;
