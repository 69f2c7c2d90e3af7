package backends

import "context"

// CapacityReporter is implemented by backends that can tell how many bytes
// new volumes may still take (the loop backend: the free space of its data
// directory). CSI's GetCapacity answers with it.
type CapacityReporter interface {
	AvailableBytes(ctx context.Context) (int64, error)
}
