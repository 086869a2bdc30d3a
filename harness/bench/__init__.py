"""`hyperbench bench`: latency and throughput of one engine under a concurrency or rate sweep.

Modules: run (run and resume a bench run folder; the engine brought up for it), resume (a cut
run's records summarized), workload (the prompts), loadgen (the open- and closed-loop senders),
trace (per-request send times), metrics (TTFT, ITL, TPOT, goodput from the records), find_rate
(--find-max-rate), repeats (--repeats: mean and CI), report (report.md and plots).
"""
