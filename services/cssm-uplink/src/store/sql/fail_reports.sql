UPDATE uplink.reports r SET state = 'failed', error = $4 FROM unnest($1::text[], $2::text[], $3::int8[])
AS u(p, s, id) WHERE r.udi_pid = u.p AND r.udi_serial = u.s AND r.report_id = u.id
