package main

import (
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// healthcheckCommand is `shimd healthcheck`: it asks a running shimd's
// /health (or /livez, /readyz) and exits non-zero unless it says healthy. Container images have
// no curl; this is their HEALTHCHECK.
func healthcheckCommand(args []string) error {
	fs := flag.NewFlagSet("shimd healthcheck", flag.ContinueOnError)
	url := fs.String("url", "http://127.0.0.1:2379/health", "The health endpoint to ask.")
	insecure := fs.Bool("insecure-skip-tls-verify", false, "Do not verify the server certificate (https).")
	timeout := fs.Duration("timeout", 5*time.Second, "Time allowed for the answer.")
	if err := fs.Parse(args); err != nil {
		return err
	}
	c := &http.Client{Timeout: *timeout, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: *insecure}}}
	resp, err := c.Get(*url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	// /health answers etcd's JSON; /livez and /readyz answer text.
	var h struct{ Health, Reason string }
	if json.Unmarshal(body, &h) == nil && h.Health != "" {
		if h.Health != "true" {
			return fmt.Errorf("unhealthy: %s", h.Reason)
		}
		return nil
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("unhealthy: %s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	return nil
}
