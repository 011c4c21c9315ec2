-- The pg_cron jobs, declared in one place. core.sync_cron_jobs registers them, schedules
-- each (a function as SELECT core.run_cron_job('<jobname>'), a procedure that commits as
-- it goes as CALL <procedure>()) and unschedules 'booking-*' jobs no longer listed. pg_cron 1.4: minute granularity at best, UTC. No correctness property
-- depends on how often any of them runs.
SELECT core.sync_cron_jobs($jobs$[
  {
    "jobname": "booking-sweep-holds",
    "schedule": "* * * * *",
    "job_function": "booking.sweep_holds_cron",
    "description": "Marks holds past their deadline expired and returns their units: 2k a batch, a commit after each, 30 s at most, pausing twice as long as each batch took.",
    "max_silence": "10 minutes"
  },
  {
    "jobname": "booking-retry-stripe-events",
    "schedule": "* * * * *",
    "job_function": "stripe.retry_due_events",
    "description": "Re-applies failed and deferred Stripe events whose retry is due (capped exponential backoff), 200 a run.",
    "max_silence": "10 minutes"
  },
  {
    "jobname": "booking-purge-holds",
    "schedule": "41 3 * * *",
    "job_function": "booking.purge_ended_holds",
    "description": "Deletes released and expired holds that ended more than 30 days ago, 10k a run.",
    "max_silence": "2 days"
  },
  {
    "jobname": "booking-purge-idempotency-keys",
    "schedule": "23 * * * *",
    "job_function": "core.purge_idempotency_keys",
    "description": "Deletes idempotency keys past their time to live, 10k a run.",
    "max_silence": "2 hours"
  },
  {
    "jobname": "booking-purge-refresh-tokens",
    "schedule": "53 4 * * *",
    "job_function": "core.purge_refresh_tokens",
    "description": "Deletes refresh tokens that expired more than 7 days ago, 10k a run.",
    "max_silence": "2 days"
  },
  {
    "jobname": "booking-enqueue-reconciliation",
    "schedule": "0 2 * * *",
    "job_function": "core.enqueue_reconciliation",
    "description": "Enqueues the stripe.reconcile job for yesterday (UTC): Stripe's charges and refunds against the ledger.",
    "max_silence": "26 hours"
  },
  {
    "jobname": "booking-prune-cron-history",
    "schedule": "17 * * * *",
    "job_function": "core.prune_cron_history",
    "description": "Deletes cron.job_run_details rows older than 7 days (pg_cron 1.4 never does), 50k a run.",
    "max_silence": "2 hours"
  }
]$jobs$::jsonb);
