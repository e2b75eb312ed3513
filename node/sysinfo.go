package node

import (
	"bufio"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
)

// machineCapacity reads what this machine offers: every CPU and all memory.
func machineCapacity() (cpuMillis, memoryMB int64, err error) {
	mem, err := readMeminfo()
	if err != nil {
		return 0, 0, err
	}
	return int64(runtime.NumCPU()) * 1000, mem["MemTotal"] / 1024, nil
}

// readMeminfo returns /proc/meminfo in kB.
func readMeminfo() (map[string]int64, error) {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return nil, fmt.Errorf("read memory info: %w", err)
	}
	defer f.Close()
	out := map[string]int64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		key, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		fields := strings.Fields(rest)
		if len(fields) == 0 {
			continue
		}
		v, err := strconv.ParseInt(fields[0], 10, 64)
		if err == nil {
			out[key] = v
		}
	}
	return out, sc.Err()
}

// cpuSampler turns /proc/stat counters into a utilisation percentage
// between two calls. It is owned by the load loop goroutine.
type cpuSampler struct {
	prevBusy, prevTotal uint64
}

func (s *cpuSampler) sample() (float64, error) {
	raw, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, fmt.Errorf("read cpu stats: %w", err)
	}
	line, _, _ := strings.Cut(string(raw), "\n")
	fields := strings.Fields(line)
	if len(fields) < 5 || fields[0] != "cpu" {
		return 0, fmt.Errorf("read cpu stats: unexpected /proc/stat line %q", line)
	}
	var total, idle uint64
	for i, f := range fields[1:] {
		v, _ := strconv.ParseUint(f, 10, 64)
		total += v
		if i == 3 || i == 4 { // idle, iowait
			idle += v
		}
	}
	busy := total - idle
	var pct float64
	if s.prevTotal != 0 && total > s.prevTotal {
		pct = 100 * float64(busy-s.prevBusy) / float64(total-s.prevTotal)
	}
	s.prevBusy, s.prevTotal = busy, total
	return pct, nil
}

// memoryUsedMB is total minus available memory.
func memoryUsedMB() (int64, error) {
	mem, err := readMeminfo()
	if err != nil {
		return 0, err
	}
	return (mem["MemTotal"] - mem["MemAvailable"]) / 1024, nil
}
