#!/usr/bin/env python3
"""The peer job of ../shared/notes/perf.md section 2 in DuckDB, on lienwatch's own wire format
(SPEC section 2 JSON Lines, as `lienwatch simulate` writes it). benches/peers.sh runs it beside
benches/examples/peer_job.rs on the same file; both apply the same rule:

- per device_id: n = readings with a GNSS fix, dist_km = haversine (R = 6371 km) between
  consecutive fixes ordered by (ts, lat, lon), max_speed = max gnss.speed_kmh of those fixes;
- a fix: gnss.lat and gnss.lon present, gnss.fix not false (absent = true); no hdop test;
- a reading is kept as lienwatch's decoder keeps it: non-blank device_id, ts as epoch ms or
  RFC 3339 between 1970 and 9999, lat in [-90, 90] and lon in [-180, 180];
- one line is one message: lines that are not JSON objects are skipped (invalid JSON or
  UTF-8: try() gives NULL; batch arrays: json_transform gives all-NULL fields), and blank
  lines. The file is read as one text column (read_csv) and each line parsed with
  json_transform, not with read_json(format='newline_delimited', ignore_errors=true): that
  reader lets a truncated line run on into the next one (a line cut after `"gnss":` takes
  the next, valid, line as its gnss value), losing a valid reading per truncated line.
  MODE read_json uses that reader anyway: DuckDB's fastest path, for the rate, with the
  mismatches it causes (one device per truncated line that cuts inside an object);
- no de-duplication (a duplicated line counts twice and adds 0 km); no future_ts test.

Usage: peer_duckdb.py INPUT.jsonl OUTPUT.csv [threads] [lines|read_json]
"""
import sys
import time

import duckdb

inp, out = sys.argv[1], sys.argv[2]
threads = int(sys.argv[3]) if len(sys.argv) > 3 else 0
mode = sys.argv[4] if len(sys.argv) > 4 else "lines"
con = duckdb.connect()
if threads:
    con.execute(f"SET threads={threads}")
con.execute("SET preserve_insertion_order=false")
# ts as VARCHAR: a JSON number arrives as its text, an RFC 3339 string as itself.
shape = ('{"device_id": "VARCHAR", "ts": "VARCHAR", "gnss": '
         '{"lat": "DOUBLE", "lon": "DOUBLE", "fix": "BOOLEAN", "speed_kmh": "DOUBLE"}}')
lines = (f"read_csv('{inp}', columns={{'j': 'VARCHAR'}}, delim='\x1f', quote='', escape='', "
         "header=false, auto_detect=false, ignore_errors=true)")
src = f"(SELECT m.* FROM (SELECT try(json_transform(j, '{shape}')) AS m FROM {lines}))"
if mode == "read_json":
    src = f"read_json('{inp}', format='newline_delimited', ignore_errors=true, columns={{" \
        "'device_id': 'VARCHAR', 'ts': 'VARCHAR', " \
        "'gnss': 'STRUCT(lat DOUBLE, lon DOUBLE, fix BOOLEAN, speed_kmh DOUBLE)'})"
elif mode != "lines":
    sys.exit(f"unknown mode {mode}")
t = time.time()
con.execute(f"""
COPY (
  WITH r AS (
    SELECT device_id,
           coalesce(try_cast(ts AS BIGINT), epoch_ms(try_cast(ts AS TIMESTAMPTZ))) AS t,
           gnss.lat AS lat, gnss.lon AS lon, gnss.speed_kmh AS speed
    FROM {src}
    WHERE trim(device_id) <> ''
      AND coalesce(gnss.fix, true) AND gnss.lat IS NOT NULL AND gnss.lon IS NOT NULL
      AND gnss.lat BETWEEN -90 AND 90 AND gnss.lon BETWEEN -180 AND 180
  ), p AS (
    SELECT device_id, speed, lat, lon,
           lag(lat) OVER w AS plat, lag(lon) OVER w AS plon
    FROM r
    WHERE t BETWEEN 0 AND 253402300799999
    WINDOW w AS (PARTITION BY device_id ORDER BY t, lat, lon)
  )
  SELECT device_id, count(*) AS n,
         sum(CASE WHEN plat IS NULL THEN 0 ELSE
             2 * 6371.0 * asin(sqrt(pow(sin(radians(lat - plat) / 2), 2)
               + cos(radians(plat)) * cos(radians(lat)) * pow(sin(radians(lon - plon) / 2), 2))) END)
           AS dist_km,
         max(speed) AS max_speed
  FROM p GROUP BY device_id ORDER BY device_id
) TO '{out}' (HEADER, DELIMITER ',')
""")
dt = time.time() - t
nthreads = con.execute("SELECT current_setting('threads')").fetchone()[0]
print(f"duckdb {duckdb.__version__} mode={mode} threads={nthreads} query_s={dt:.3f}", file=sys.stderr)
