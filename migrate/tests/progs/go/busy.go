// A Go program (the runtime's many threads, futexes, SIGURG preemption, its epoll netpoller)
// for freeze/thaw: eight workers hash what a ticker hands them over a channel, and a pipe
// (read through the netpoller) carries every result to the printer.
// Its output must not depend on timing.  usage: busy ITEMS
package main

import (
	"bufio"
	"crypto/sha256"
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"
)

func main() {
	n, _ := strconv.Atoi(os.Args[1])
	r, w, err := os.Pipe()
	if err != nil {
		panic(err)
	}
	var wmu sync.Mutex
	var wg sync.WaitGroup
	ch := make(chan int)
	for k := 0; k < 8; k++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range ch {
				h := sha256.Sum256([]byte(strconv.Itoa(i)))
				for j := 0; j < 20000; j++ {
					h = sha256.Sum256(h[:])
				}
				wmu.Lock()
				fmt.Fprintf(w, "%d %x\n", i, h[:6])
				wmu.Unlock()
			}
		}()
	}
	results := make([]string, n)
	done := make(chan struct{})
	go func() {
		s := bufio.NewScanner(r)
		for s.Scan() {
			var i int
			var h string
			fmt.Sscanf(s.Text(), "%d %s", &i, &h)
			results[i] = h
		}
		close(done)
	}()
	tick := time.NewTicker(5 * time.Millisecond)
	for i := 0; i < n; i++ {
		<-tick.C
		ch <- i
		if i%50 == 0 {
			fmt.Println("sent", i)
		}
	}
	close(ch)
	wg.Wait()
	w.Close()
	<-done
	for i, h := range results {
		fmt.Println(i, h)
	}
	fmt.Println("DONE ok")
}
