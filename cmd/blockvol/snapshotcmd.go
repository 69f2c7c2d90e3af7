package main

import (
	"fmt"
	"text/tabwriter"

	"github.com/blockvol/blockvol/plugin"
	"github.com/blockvol/blockvol/volumes"
)

// resize grows a volume; its filesystem too when it is mounted. Growing a
// large filesystem takes as long as a mount may.
func (c *volumeCLI) resize(name, size string) error {
	ctx, cancel := withLimit(createMountLimit)
	defer cancel()
	if err := c.client.call(ctx, plugin.ResizePath[1:], plugin.ResizeRequest{Name: name, Size: size}, nil); err != nil {
		return err
	}
	return c.done(name, "")
}

func (c *volumeCLI) snapshotCreate(volume, name string) error {
	ctx, cancel := withLimit(createMountLimit)
	defer cancel()
	var resp plugin.SnapshotResponse
	if err := c.client.call(ctx, plugin.SnapshotCreatePath[1:], plugin.SnapshotCreateRequest{Volume: volume, Name: name}, &resp); err != nil {
		return err
	}
	if c.json {
		return c.printJSON(resp.Snapshot)
	}
	fmt.Fprintln(c.out, name)
	return nil
}

func (c *volumeCLI) snapshotLs(volume string) error {
	ctx, cancel := withLimit(otherLimit)
	defer cancel()
	var resp plugin.SnapshotListResponse
	if err := c.client.call(ctx, plugin.SnapshotListPath[1:], plugin.SnapshotListRequest{Volume: volume}, &resp); err != nil {
		return err
	}
	snaps := resp.Snapshots
	if snaps == nil {
		snaps = []plugin.Snapshot{}
	}
	if c.json {
		return c.printJSON(snaps)
	}
	tw := tabwriter.NewWriter(c.out, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "SNAPSHOT\tVOLUME\tSIZE\tCREATED\tCOPY")
	for _, s := range snaps {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", s.Name, orDash(s.Volume), volumes.FormatSize(s.SizeBytes), orDash(s.CreatedAt), formatValue(s.Status["copy"]))
	}
	return tw.Flush()
}

func (c *volumeCLI) snapshotRm(name string) error {
	ctx, cancel := withLimit(otherLimit)
	defer cancel()
	if err := c.client.call(ctx, plugin.SnapshotRemovePath[1:], plugin.SnapshotRemoveRequest{Name: name}, nil); err != nil {
		return err
	}
	return c.done(name, "")
}
