package vm

import (
	"strconv"
	"strings"
	"time"
)

// Event is one VMTEST console line (see the package documentation).
type Event struct {
	Kind     string // INIT, PLAN, BEGIN, STEP, TIME, ERROR, PASS, FAIL, SKIP, DONE, EXIT
	Scenario string
	Name     string  // TIME: the metric
	Secs     float64 // STEP, TIME, PASS, FAIL, DONE: seconds (guest clock)
	Text     string  // STEP: description; ERROR, FAIL: message; SKIP: reason
	Fields   []string
	// At is the host's elapsed time when the line arrived; ConsoleIndex
	// its index in Result.Console.
	At           time.Duration
	ConsoleIndex int
}

const marker = "VMTEST "

// ParseEvent parses a console line holding a VMTEST record. The marker may
// follow other text (a kernel message can share the line).
func ParseEvent(line string) (Event, bool) {
	i := strings.Index(line, marker)
	if i < 0 {
		return Event{}, false
	}
	rest := line[i+len(marker):]
	kind, rest, _ := strings.Cut(rest, " ")
	ev := Event{Kind: kind, Fields: strings.Fields(rest)}
	f := ev.Fields
	// n returns field k as seconds, with an optional "s" suffix.
	n := func(k int) float64 {
		if k >= len(f) {
			return 0
		}
		v, _ := strconv.ParseFloat(strings.TrimSuffix(f[k], "s"), 64)
		return v
	}
	// tail returns the text after the first k fields.
	tail := func(k int) string {
		s := rest
		for j := 0; j < k; j++ {
			s = strings.TrimLeft(s, " ")
			if sp := strings.IndexByte(s, ' '); sp >= 0 {
				s = s[sp:]
			} else {
				s = ""
			}
		}
		return strings.TrimSpace(s)
	}
	if len(f) > 0 {
		switch kind {
		case "BEGIN", "STEP", "TIME", "ERROR", "PASS", "FAIL", "SKIP":
			ev.Scenario = f[0]
		}
	}
	switch kind {
	case "INIT":
		ev.Secs = n(0)
		ev.Text = tail(1)
	case "STEP":
		ev.Secs, ev.Text = n(1), tail(2)
	case "TIME":
		if len(f) > 1 {
			ev.Name = f[1]
		}
		ev.Secs = n(2)
	case "ERROR", "SKIP":
		ev.Text = tail(1)
	case "PASS":
		ev.Secs = n(1)
	case "FAIL":
		ev.Secs, ev.Text = n(1), tail(2)
	case "DONE":
		ev.Secs = n(3)
	case "PLAN", "BEGIN", "EXIT", "READY":
	default:
		return Event{}, false
	}
	return ev, true
}

// Scenario gathers the events of one guest scenario.
type Scenario struct {
	Name string
	// Outcome is PASS, FAIL or SKIP; "" when the scenario never ended (the
	// guest died or timed out in it) or never began.
	Outcome string
	Began   bool
	Secs    float64
	Message string   // FAIL message or SKIP reason
	Steps   []Event  // STEP events
	Errors  []string // ERROR messages
	Times   []Event  // TIME events
	// Console is every console line from BEGIN to the end event.
	Console []string
}

// Plan returns the scenarios the guest announced, in order.
func (r *Result) Plan() []string {
	for _, ev := range r.Events {
		if ev.Kind == "PLAN" {
			return ev.Fields
		}
	}
	return nil
}

// Event returns the first event of kind, if any.
func (r *Result) Event(kind string) (Event, bool) {
	for _, ev := range r.Events {
		if ev.Kind == kind {
			return ev, true
		}
	}
	return Event{}, false
}

// Scenarios returns the planned scenarios and any other that began, in
// order, with their events.
func (r *Result) Scenarios() []*Scenario {
	var out []*Scenario
	by := map[string]*Scenario{}
	get := func(name string) *Scenario {
		if s, ok := by[name]; ok {
			return s
		}
		s := &Scenario{Name: name}
		by[name] = s
		out = append(out, s)
		return s
	}
	for _, name := range r.Plan() {
		get(name)
	}
	var cur *Scenario
	begin := 0
	for _, ev := range r.Events {
		if ev.Scenario == "" {
			continue
		}
		s := get(ev.Scenario)
		switch ev.Kind {
		case "BEGIN":
			s.Began = true
			cur, begin = s, ev.ConsoleIndex
		case "STEP":
			s.Steps = append(s.Steps, ev)
		case "TIME":
			s.Times = append(s.Times, ev)
		case "ERROR":
			s.Errors = append(s.Errors, ev.Text)
		case "PASS", "FAIL", "SKIP":
			s.Outcome, s.Secs = ev.Kind, ev.Secs
			if ev.Kind != "PASS" {
				s.Message = ev.Text
			}
			if cur == s {
				s.Console = append([]string(nil), r.Console[begin:ev.ConsoleIndex+1]...)
				cur = nil
			}
		}
	}
	if cur != nil { // still running when the VM stopped
		cur.Console = append([]string(nil), r.Console[begin:]...)
	}
	return out
}

// Metrics returns every TIME event, in order.
func (r *Result) Metrics() []Event {
	var out []Event
	for _, ev := range r.Events {
		if ev.Kind == "TIME" {
			out = append(out, ev)
		}
	}
	return out
}
