"""Captured `wrk --latency` outputs (wrk 4.1.0, Debian) used by test_wrk.py."""

PLAIN = """\
Running 1s test @ http://127.0.0.1:18090/MG0wazBpMGcw
  1 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   577.55us  302.90us   4.65ms   87.46%
    Req/Sec    14.43k     1.85k   16.50k    72.73%
  Latency Distribution
     50%  482.00us
     75%  558.00us
     90%    0.92ms
     99%    2.07ms
  15754 requests in 1.10s, 9.90MB read
Requests/sec:  14319.63
Transfer/sec:      9.00MB
"""

WITH_LUA = """\
Running 1s test @ http://127.0.0.1:18090/
  1 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.70ms    1.74ms   8.10ms   84.11%
    Req/Sec     6.23k     1.34k    8.57k    60.00%
  Latency Distribution
     50%  788.00us
     75%    2.42ms
     90%    4.07ms
     99%    7.92ms
  6230 requests in 1.00s, 3.83MB read
Requests/sec:   6202.06
Transfer/sec:      3.82MB
@@ summary requests=6230 duration_us=1004505 bytes=4019200 connect=0 read=0 write=0 status=0 timeout=0
@@ latency_us min=83 mean=1697.4 stdev=1735.0 max=8096 p50=788 p75=2423 p90=4071 p99=7916 p99.9=8077
"""

# A 404 run with socket errors added by hand in wrk's format.
ERRORS = """\
Running 1s test @ http://127.0.0.1:18090/nothing-here
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.11ms    1.52ms   8.31ms   84.23%
    Req/Sec     7.91k     1.49k   11.25k    70.00%
  Latency Distribution
     50%  299.00us
     75%    1.64ms
     90%    3.36ms
     99%    6.94ms
  7900 requests in 1.01s, 1.25MB read
  Socket errors: connect 0, read 12, write 0, timeout 3
  Non-2xx or 3xx responses: 7900
Requests/sec:   7846.93
Transfer/sec:      1.24MB
"""
