// Counts the lines of gzip files with Go's standard library (compress/gzip reads concatenated members), one
// count per file, as a Go program reading hour archives would; fails on anything gzip or JSON refuses.
package main

import (
	"bufio"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"os"
)

func main() {
	for _, path := range os.Args[1:] {
		f, err := os.Open(path)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		z, err := gzip.NewReader(f)
		if err != nil {
			fmt.Fprintln(os.Stderr, path, err)
			os.Exit(1)
		}
		lines := bufio.NewScanner(z)
		lines.Buffer(make([]byte, 1<<20), 1<<26)
		n := 0
		for lines.Scan() {
			var event map[string]any
			if err := json.Unmarshal(lines.Bytes(), &event); err != nil {
				fmt.Fprintln(os.Stderr, path, "line", n+1, err)
				os.Exit(1)
			}
			if _, ok := event["ts"]; !ok {
				fmt.Fprintln(os.Stderr, path, "line", n+1, "has no ts")
				os.Exit(1)
			}
			n++
		}
		if err := lines.Err(); err != nil {
			fmt.Fprintln(os.Stderr, path, err)
			os.Exit(1)
		}
		fmt.Println(n)
	}
}
