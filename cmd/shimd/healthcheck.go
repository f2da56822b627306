package main

import (
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"time"
)

// healthcheckCommand is `shimd healthcheck`: it asks a running shimd's
// /health and exits non-zero unless it says healthy. Container images have
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
	var h struct{ Health, Reason string }
	if err := json.NewDecoder(resp.Body).Decode(&h); err != nil {
		return fmt.Errorf("%s: %v", *url, err)
	}
	if h.Health != "true" {
		return fmt.Errorf("unhealthy: %s", h.Reason)
	}
	return nil
}
