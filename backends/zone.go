package backends

// Zoner is implemented by backends whose volumes live in availability
// zones (cinder): Zone is the zone this host uses them in ("" for none).
// CSI reports it as the node's topology and creates volumes there.
type Zoner interface {
	Zone() string
}
