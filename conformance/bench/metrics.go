package main

import (
	"bufio"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

// Server-side figures from the /metrics endpoint both servers have on their
// client URL (etcd's names; shimd exports the same ones where it has the
// thing, plus its own), read around each write phase to see where a write's
// time goes: the group commit's batch size, the database commit, and (shimd)
// each SQL statement of a batch.

// scrapedSeries are the histograms read, by the prefix of their _sum and
// _count series.
var scrapedSeries = []string{
	"shimd_log_write_batch_requests",
	"shimd_sql_statement_duration_seconds",
	"etcd_disk_backend_commit_duration_seconds",
	"etcd_disk_wal_fsync_duration_seconds",
}

// scrapedGauges are Go runtime gauges both servers export, logged after each
// phase to tell the Go heap from the rest of the RSS.
var scrapedGauges = []string{"go_memstats_heap_inuse_bytes", "go_memstats_next_gc_bytes"}

// memory describes the server's memory now: peak and current RSS, the
// anonymous and file-backed parts, and (when it has /metrics) the Go heap in
// use and the heap size at which its next GC starts.
func memory(pid int, endpoint string) string {
	status := map[string]string{}
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid)); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok {
				status[k] = strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB"))
			}
		}
	}
	mib := func(kb string) string {
		n, err := strconv.ParseFloat(strings.TrimSpace(kb), 64)
		if err != nil {
			return "?"
		}
		return fmt.Sprintf("%.0f", n/1024)
	}
	s := fmt.Sprintf("RSS peak %s now %s (anon %s file %s) MiB", mib(status["VmHWM"]), mib(status["VmRSS"]), mib(status["RssAnon"]), mib(status["RssFile"]))
	if m := scrape(endpoint); m != nil {
		if h, ok := m["go_memstats_heap_inuse_bytes"]; ok {
			s += fmt.Sprintf(", Go heap %.0f next GC %.0f MiB", h/(1<<20), m["go_memstats_next_gc_bytes"]/(1<<20))
		}
	}
	return s
}

// scrape returns the _sum and _count of the scraped histograms, keyed by the
// series name with its labels (nil if the server has no /metrics).
func scrape(endpoint string) map[string]float64 {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(endpoint + "/metrics")
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return nil
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		name, val, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		if contains(scrapedGauges, name) {
			if v, err := strconv.ParseFloat(strings.TrimSpace(val), 64); err == nil {
				out[name] = v
			}
			continue
		}
		if !(strings.Contains(name, "_sum") || strings.Contains(name, "_count")) {
			continue
		}
		for _, p := range scrapedSeries {
			if strings.HasPrefix(name, p+"_sum") || strings.HasPrefix(name, p+"_count") {
				if v, err := strconv.ParseFloat(strings.TrimSpace(val), 64); err == nil {
					out[name] = v
				}
			}
		}
	}
	return out
}

// diff adds after−before into acc.
func diff(acc, before, after map[string]float64) {
	for k, v := range after {
		acc[k] += v - before[k]
	}
}

// metricFigures turns a phase's accumulated deltas into per-phase figures:
// mean batch size, batches, mean commit and fsync time, and for each SQL
// statement its mean time and runs per batch.
func metricFigures(m map[string]float64, phase string, d map[string]float64) {
	mean := func(p string) (float64, float64, bool) {
		n := d[p+"_count"]
		if n <= 0 {
			return 0, 0, false
		}
		return d[p+"_sum"] / n, n, true
	}
	batches := 0.0
	if v, n, ok := mean("shimd_log_write_batch_requests"); ok {
		m[phase+".batch"] = v
		m[phase+".batches"] = n
		batches = n
	}
	if v, n, ok := mean("etcd_disk_backend_commit_duration_seconds"); ok {
		m[phase+".commitms"] = v * 1000
		m[phase+".commits"] = n
	}
	if v, n, ok := mean("etcd_disk_wal_fsync_duration_seconds"); ok {
		m[phase+".fsyncms"] = v * 1000
		m[phase+".fsyncs"] = n
	}
	for k := range d {
		const p = "shimd_sql_statement_duration_seconds_count"
		if !strings.HasPrefix(k, p) {
			continue
		}
		labels := strings.TrimPrefix(k, p)
		stmt := strings.Trim(strings.TrimPrefix(strings.Trim(labels, "{}"), "statement="), `"`)
		n := d[k]
		if n <= 0 {
			continue
		}
		m[fmt.Sprintf("%s.sql.%s.ms", phase, stmt)] = d["shimd_sql_statement_duration_seconds_sum"+labels] / n * 1000
		if batches > 0 {
			m[fmt.Sprintf("%s.sql.%s.perbatch", phase, stmt)] = n / batches
		}
	}
}

// rssKiB is the process's resident set now (VmRSS), in KiB; 0 if unknown.
func rssKiB(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return n
		}
	}
	return 0
}

// sampleRSS samples the process's RSS every 5 ms until the returned
// function is called, which returns the largest sample (KiB).
func sampleRSS(pid int) (stop func() int64) {
	done := make(chan struct{})
	peak := make(chan int64, 1)
	go func() {
		t := time.NewTicker(5 * time.Millisecond)
		defer t.Stop()
		hi := rssKiB(pid)
		for {
			select {
			case <-done:
				peak <- max(hi, rssKiB(pid))
				return
			case <-t.C:
				hi = max(hi, rssKiB(pid))
			}
		}
	}()
	return func() int64 {
		close(done)
		return <-peak
	}
}
