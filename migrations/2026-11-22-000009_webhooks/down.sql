DROP TABLE sched.webhook_deliveries;
DROP TABLE sched.webhooks;
