-- The pg_cron jobs, declared in one place. core.sync_cron_jobs registers them, schedules
-- each as SELECT core.run_cron_job('<jobname>') and unschedules 'booking-*' jobs no
-- longer listed. pg_cron 1.4: minute granularity at best, UTC. No correctness property
-- depends on how often any of them runs.
SELECT core.sync_cron_jobs($jobs$[
  {
    "jobname": "booking-prune-cron-history",
    "schedule": "17 * * * *",
    "job_function": "core.prune_cron_history",
    "description": "Deletes cron.job_run_details rows older than 7 days (pg_cron 1.4 never does), 50k a run.",
    "max_silence": "2 hours"
  }
]$jobs$::jsonb);
