package loop

import (
	"context"
	"fmt"
	"syscall"

	"github.com/blockvol/blockvol/backends"
)

var _ backends.CapacityReporter = (*Backend)(nil)

// AvailableBytes is the free space of the data directory's filesystem for
// an unprivileged writer. Images are sparse, so it bounds what volumes can
// still write, not their sizes.
func (b *Backend) AvailableBytes(ctx context.Context) (int64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(b.dir, &st); err != nil {
		return 0, fmt.Errorf("free space of %s: %w", b.dir, err)
	}
	return int64(st.Bavail) * int64(st.Bsize), nil
}
