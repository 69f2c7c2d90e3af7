package main

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"strconv"
	"time"
)

// The multi-host tests' writer: numbered, checksummed records, each
// acknowledged only after fdatasync returned, so that the host test knows
// exactly which writes the volume promised to keep.
//
// A record is one 4096-byte block at offset (seq-1)*4096 of the file:
//
//	0   8  magic "BVMHREC1"
//	8   8  writer id, NUL-padded
//	16  8  seq, big endian
//	24  .. pseudo-random filler
//	4064 32 SHA-256 of bytes 0..4064
//
// The same layout is what test/vm's host side looks for in a volume's
// backing file.

const (
	recSize  = 4096
	recMagic = "BVMHREC1"
)

// makeRecord builds record seq of writer id.
func makeRecord(id string, seq uint64) []byte {
	b := make([]byte, recSize)
	copy(b, recMagic)
	copy(b[8:16], id)
	binary.BigEndian.PutUint64(b[16:24], seq)
	rng := rand.New(rand.NewPCG(seq, uint64(len(id))))
	for i := 24; i < recSize-32; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], rng.Uint64())
	}
	sum := sha256.Sum256(b[:recSize-32])
	copy(b[recSize-32:], sum[:])
	return b
}

// writerMain: `vmguest writer FILE ID INTERVAL` writes records 1, 2, ...
// one every INTERVAL (a Go duration) until killed, printing "ack N" once
// record N is on stable storage and "fail N: ERR" when its write or sync
// failed (the writer goes on with N+1, as an application would).
func writerMain(args []string) int {
	if len(args) != 3 || len(args[1]) > 8 {
		fmt.Fprintln(os.Stderr, "usage: vmguest writer FILE ID(<=8 bytes) INTERVAL")
		return 2
	}
	every, err := time.ParseDuration(args[2])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	f, err := os.OpenFile(args[0], os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	tick := time.NewTicker(every)
	defer tick.Stop()
	for seq := uint64(1); ; seq++ {
		_, err := f.WriteAt(makeRecord(args[1], seq), int64(seq-1)*recSize)
		if err == nil {
			err = f.Sync()
		}
		if err != nil {
			os.Stdout.WriteString("fail " + strconv.FormatUint(seq, 10) + ": " + err.Error() + "\n")
		} else {
			os.Stdout.WriteString("ack " + strconv.FormatUint(seq, 10) + "\n")
		}
		<-tick.C
	}
}

// recordsReport is what `vmguest records` prints (JSON).
type recordsReport struct {
	// Valid lists the seqs of intact records of the writer, in file order.
	Valid []uint64 `json:"valid"`
	// Bad counts blocks with the magic and writer id but a wrong checksum
	// or a seq that does not match their place.
	Bad int `json:"bad"`
}

// recordsMain: `vmguest records FILE ID` reads the file and reports the
// writer's intact records.
func recordsMain(args []string) int {
	if len(args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: vmguest records FILE ID")
		return 2
	}
	f, err := os.Open(args[0])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer f.Close()
	rep := recordsReport{Valid: []uint64{}}
	buf := make([]byte, recSize)
	for off := int64(0); ; off += recSize {
		n, err := io.ReadFull(f, buf)
		if n == recSize {
			switch seq, ok := checkRecord(buf, args[1]); {
			case ok && int64(seq-1)*recSize == off:
				rep.Valid = append(rep.Valid, seq)
			case ok || string(buf[:8]) == recMagic:
				rep.Bad++
			}
		}
		if err != nil {
			break
		}
	}
	json.NewEncoder(os.Stdout).Encode(rep)
	return 0
}

// checkRecord returns the seq of an intact record of writer id in b.
func checkRecord(b []byte, id string) (uint64, bool) {
	if string(b[:8]) != recMagic {
		return 0, false
	}
	var want [8]byte
	copy(want[:], id)
	if string(b[8:16]) != string(want[:]) {
		return 0, false
	}
	sum := sha256.Sum256(b[:recSize-32])
	if string(sum[:]) != string(b[recSize-32:recSize]) {
		return 0, false
	}
	return binary.BigEndian.Uint64(b[16:24]), true
}
