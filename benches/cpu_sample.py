#!/usr/bin/env python3
"""Samples CPU use per process, and per thread of the processes named NAME, every INTERVAL
seconds until killed: one line per sample, `<s since start>\t<epoch s>\t<name[pid]:percent>...`,
busiest first, entries under 5 % left out. Percent of one core over the interval, from
utime + stime of /proc/<pid>/stat and /proc/<pid>/task/<tid>/stat (thread names as the
threads set them: timely:work-0, archive-upload-…). Used by `CPU_SAMPLE=1 benches/latency.sh`
to tell which process or thread held the 2 cores when the probes stalled. Ends by itself
when the script that started it is gone.

Usage: benches/cpu_sample.py OUT [INTERVAL=0.25] [NAME=lienwatch]
"""
import os
import sys
import time


def read_stat(path):
    """(name, utime + stime in clock ticks) of a /proc stat file."""
    with open(path) as f:
        text = f.read()
    close = text.rfind(')')
    fields = text[close + 2:].split()
    return text[text.find('(') + 1:close], int(fields[11]) + int(fields[12])


def sample(name):
    """Ticks used so far by every process, and by every thread of the processes `name`."""
    ticks = {}
    for pid in filter(str.isdigit, os.listdir('/proc')):
        try:
            comm, used = read_stat(f'/proc/{pid}/stat')
            ticks[pid] = (f'{comm}[{pid}]', used)
            if comm == name:
                for tid in os.listdir(f'/proc/{pid}/task'):
                    thread, used = read_stat(f'/proc/{pid}/task/{tid}/stat')
                    ticks[f't{tid}'] = (f'  {thread}[{tid}]', used)
        except OSError:
            continue  # the process ended between listing and reading
    return ticks


def main():
    out = open(sys.argv[1], 'w')
    interval = float(sys.argv[2]) if len(sys.argv) > 2 else 0.25
    name = sys.argv[3] if len(sys.argv) > 3 else 'lienwatch'
    hz = os.sysconf('SC_CLK_TCK')
    parent = os.getppid()
    started = time.time()
    before, at = sample(name), time.time()
    while os.getppid() == parent:
        time.sleep(interval)
        now, now_at = sample(name), time.time()
        busy = []
        for key, (label, used) in now.items():
            if key in before:
                percent = (used - before[key][1]) / hz / (now_at - at) * 100
                if percent >= 5:
                    busy.append((percent, label.strip()))
        busy.sort(reverse=True)
        cells = ' '.join(f'{label}:{percent:.0f}' for percent, label in busy)
        out.write(f'{now_at - started:.1f}\t{now_at:.3f}\t{cells}\n')
        out.flush()
        before, at = now, now_at


if __name__ == '__main__':
    main()
