package testsrv

import "testing"

// `make unit` (-short) must start no daemon: StartTGTD and StartSSHD skip
// there before starting anything.
func TestShortModeStartsNoDaemon(t *testing.T) {
	if !testing.Short() {
		t.Skip("checks -short mode only")
	}
	for name, start := range map[string]func(*testing.T){
		"tgtd": func(t *testing.T) { StartTGTD(t) },
		"sshd": func(t *testing.T) { StartSSHD(t) },
	} {
		started := false
		t.Run(name, func(t *testing.T) {
			start(t)
			started = true
		})
		if started {
			t.Errorf("-short started %s", name)
		}
	}
}
