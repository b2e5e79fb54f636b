SELECT smart_account, virtual_account, license, line, subscription_id, quantity, end_date
FROM sched.pool_terms
WHERE end_date IS NOT NULL AND upper(license_type) <> 'PERPETUAL' AND end_date <= $1 AND end_date > $2
ORDER BY end_date, 1, 2, 3, 4
