package shimd_test

import (
	"context"
	"fmt"
	"log"
	"log/slog"
	"os"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/shimd/shimd"
)

// Example runs shimd on SQLite in a temporary directory, on a port the
// system picks, and uses it through etcd's Go client.
func Example() {
	dir, err := os.MkdirTemp("", "shimd-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	srv, err := shimd.Run(context.Background(), shimd.Config{
		DataDir:          dir, // no Endpoint: SQLite in DataDir
		ListenClientURLs: []string{"http://127.0.0.1:0"},
		Logger:           slog.New(slog.DiscardHandler),
	})
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Close()

	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{srv.ClientURL()}, DialTimeout: 5 * time.Second})
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, "greeting", "hello"); err != nil {
		log.Fatal(err)
	}
	resp, err := cli.Get(ctx, "greeting")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s = %s\n", resp.Kvs[0].Key, resp.Kvs[0].Value)
	cli.Close()

	if err := srv.Close(); err != nil {
		log.Fatal(err)
	}
	fmt.Println("stopped")
	// Output:
	// greeting = hello
	// stopped
}
