"""A randomized fault checker: seeded schedules, a runner against worker processes, a checker.

`schedule.generate(seed)` draws a schedule (faults and workload) from `random.Random(seed)`;
`runner.run_schedule` plays it against 2-3 `statusek worker` processes and records a
`History` (every command and its reply, the event log, every subscriber's notifications);
`checker.check(history)` is a pure function that names the anomalies in it.
"""
