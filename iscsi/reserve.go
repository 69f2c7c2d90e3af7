package iscsi

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Persistent reservations (SCSI-3 PR), so that a host that took a volume
// over can fence the previous holder at the target: with a "Write
// Exclusive – Registrants Only" reservation, only the I_T nexuses
// registered with this host's key may write; a new session of any other
// host — one that logs in again with credentials the target still accepts
// — gets RESERVATION CONFLICT for every write.
//
// PERSISTENT RESERVE OUT is sent with SG_IO to each SCSI device of the
// volume (every path of a multipath device), not with the kernel's PR
// ioctls: those set APTPL on every registration, which tgt (among others)
// refuses as an invalid field.

// ErrNoReservations: the device (or its target) does not support
// persistent reservations.
var ErrNoReservations = errors.New("the device does not support SCSI persistent reservations")

// errConflict is the target's RESERVATION CONFLICT.
var errConflict = errors.New("reservation conflict")

// PERSISTENT RESERVE OUT service actions and the reservation type used.
const (
	proutRegister       = 0x00
	proutReserve        = 0x01
	proutClear          = 0x03
	proutRegisterIgnore = 0x06
	prTypeWERO          = 0x05 // Write Exclusive – Registrants Only
)

// Reserve registers key on every path of dev and reserves the logical
// unit for the registrants of key. A reservation another key holds is
// cleared first: call it only on a volume this host has been granted
// (after a takeover). Targets bind registrations to iSCSI sessions: after
// a new login (a session re-established after an outage) call it again.
func (i *Initiator) Reserve(ctx context.Context, dev string, key uint64) error {
	if key == 0 {
		return errors.New("a reservation key must not be 0")
	}
	paths, err := scsiPaths(dev)
	if err != nil {
		return err
	}
	registerAll := func() error {
		for _, p := range paths {
			if err := prOut(p, proutRegisterIgnore, 0, key); err != nil {
				return fmt.Errorf("register reservation key on %s: %w", p, err)
			}
		}
		return nil
	}
	if err := registerAll(); err != nil {
		return err
	}
	err = prOut(paths[0], proutReserve, key, 0)
	if !errors.Is(err, errConflict) || ctx.Err() != nil {
		return wrapPR("reserve", paths[0], err)
	}
	// Held by another key (the host taken over, or a session of this
	// host's that is gone): clear every registration and take it anew.
	if err := prOut(paths[0], proutClear, key, 0); err != nil {
		return fmt.Errorf("clear the reservation of %s: %w", paths[0], err)
	}
	if err := registerAll(); err != nil {
		return err
	}
	return wrapPR("reserve", paths[0], prOut(paths[0], proutReserve, key, 0))
}

// Unreserve gives up this host's registration on every path of dev,
// which releases a reservation it holds. A device gone or without
// reservations is fine.
func (i *Initiator) Unreserve(ctx context.Context, dev string, key uint64) error {
	paths, err := scsiPaths(dev)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, p := range paths {
		err := prOut(p, proutRegisterIgnore, 0, 0)
		if err != nil && !errors.Is(err, ErrNoReservations) && !errors.Is(err, os.ErrNotExist) {
			return wrapPR("unregister", p, err)
		}
	}
	return nil
}

// scsiPaths returns the SCSI disks of dev: itself, or the paths of a
// device-mapper (multipath) device.
func scsiPaths(dev string) ([]string, error) {
	real, err := filepath.EvalSymlinks(dev)
	if err != nil {
		return nil, err
	}
	name := filepath.Base(real)
	if !strings.HasPrefix(name, "dm-") {
		return []string{real}, nil
	}
	slaves, err := os.ReadDir(filepath.Join("/sys/block", name, "slaves"))
	if err != nil {
		return nil, err
	}
	var paths []string
	for _, s := range slaves {
		paths = append(paths, "/dev/"+s.Name())
	}
	if len(paths) == 0 {
		return nil, fmt.Errorf("%s has no paths", dev)
	}
	return paths, nil
}

// sgIOHdr is struct sg_io_hdr (scsi/sg.h).
type sgIOHdr struct {
	InterfaceID    int32
	DxferDirection int32
	CmdLen         uint8
	MxSbLen        uint8
	IovecCount     uint16
	DxferLen       uint32
	Dxferp         uintptr
	Cmdp           uintptr
	Sbp            uintptr
	Timeout        uint32
	Flags          uint32
	PackID         int32
	UsrPtr         uintptr
	Status         uint8
	MaskedStatus   uint8
	MsgStatus      uint8
	SbLenWr        uint8
	HostStatus     uint16
	DriverStatus   uint16
	Resid          int32
	Duration       uint32
	Info           uint32
}

const (
	sgIO          = 0x2285
	sgDxferToDev  = -2
	prTimeoutMsec = 30000
)

// prOut sends PERSISTENT RESERVE OUT with the basic parameter list (no
// SPEC_I_PT, ALL_TG_PT or APTPL) to the SCSI disk at path.
func prOut(path string, action byte, resKey, saKey uint64) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	cdb := make([]byte, 10)
	cdb[0] = 0x5f
	cdb[1] = action
	if action == proutReserve || action == proutClear {
		cdb[2] = prTypeWERO // LU scope (0) in the high nibble
	}
	binary.BigEndian.PutUint32(cdb[5:9], 24)
	param := make([]byte, 24)
	binary.BigEndian.PutUint64(param[0:8], resKey)
	binary.BigEndian.PutUint64(param[8:16], saKey)
	sense := make([]byte, 32)
	h := &sgIOHdr{
		InterfaceID: 'S', DxferDirection: sgDxferToDev, CmdLen: uint8(len(cdb)), MxSbLen: uint8(len(sense)),
		DxferLen: uint32(len(param)), Dxferp: uintptr(unsafe.Pointer(&param[0])),
		Cmdp: uintptr(unsafe.Pointer(&cdb[0])), Sbp: uintptr(unsafe.Pointer(&sense[0])), Timeout: prTimeoutMsec,
	}
	_, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), sgIO, uintptr(unsafe.Pointer(h)))
	runtime.KeepAlive(cdb)
	runtime.KeepAlive(param)
	runtime.KeepAlive(sense)
	switch {
	case e == unix.ENOTTY || e == unix.EINVAL:
		return ErrNoReservations
	case e != 0:
		return e
	case h.HostStatus != 0 || h.DriverStatus&^0x08 != 0: // DRIVER_SENSE alone is not an error
		return fmt.Errorf("transport error (host status %#x, driver status %#x)", h.HostStatus, h.DriverStatus)
	}
	switch h.Status {
	case 0:
		return nil
	case 0x18:
		return errConflict
	case 0x02: // CHECK CONDITION
		if h.SbLenWr > 2 && senseKey(sense) == 0x05 { // ILLEGAL REQUEST: no PR, or not this use of it
			return fmt.Errorf("%w (%s)", ErrNoReservations, senseText(sense))
		}
		return fmt.Errorf("check condition (%s)", senseText(sense))
	}
	return fmt.Errorf("SCSI status %#x", h.Status)
}

// senseKey returns the sense key of fixed or descriptor sense data.
func senseKey(s []byte) byte {
	if s[0]&0x7f >= 0x72 {
		return s[1] & 0x0f
	}
	return s[2] & 0x0f
}

func senseText(s []byte) string {
	asc, ascq := s[12], s[13]
	if s[0]&0x7f >= 0x72 {
		asc, ascq = s[2], s[3]
	}
	return fmt.Sprintf("sense key %#x, ASC/ASCQ %#02x/%#02x", senseKey(s), asc, ascq)
}

func wrapPR(what, dev string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s %s: %w", what, dev, err)
}
