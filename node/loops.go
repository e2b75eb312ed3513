package node

import (
	"context"
	"sync"
)

// loopGroup starts the agent's long-running loops and waits for them: a
// loop is a function that returns when its context ends.
type loopGroup struct {
	wg sync.WaitGroup
}

// run starts loop on its own goroutine.
func (g *loopGroup) run(ctx context.Context, loop func(context.Context)) {
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		loop(ctx)
	}()
}

// wait returns once every loop started by run has returned.
func (g *loopGroup) wait() { g.wg.Wait() }
