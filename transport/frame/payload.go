package frame

import (
	"encoding"
	"fmt"
	"math"
	"strings"
)

// PageSize is the unit of memory a PageDelta carries. CRIU's page images are in 4 KiB
// pages on every architecture ftrun runs on; runs that are not whole pages can only
// come from a bug or a forged frame, so they are refused.
const PageSize = 4096

// Payload is implemented by every frame payload. Encodings are strict both ways: a
// value that would not decode is refused by MarshalBinary too, so one end never sends
// what the other must reject. Byte slices a payload decodes into alias the input.
type Payload interface {
	Type() Type
	encoding.BinaryMarshaler
	encoding.BinaryUnmarshaler
	encoding.BinaryAppender
}

// NewPayload returns an empty payload value of type t, ready for UnmarshalBinary.
func NewPayload(t Type) (Payload, error) {
	switch t {
	case TypeHello:
		return new(Hello), nil
	case TypeEpochBegin:
		return new(EpochBegin), nil
	case TypeImageData:
		return new(ImageData), nil
	case TypePageDelta:
		return new(PageDelta), nil
	case TypeFileDelta:
		return new(FileDelta), nil
	case TypeEpochCommit:
		return new(EpochCommit), nil
	case TypeAck:
		return new(Ack), nil
	case TypeNack:
		return new(Nack), nil
	case TypeHeartbeat:
		return new(Heartbeat), nil
	case TypeResyncRequest:
		return new(ResyncRequest), nil
	}
	return nil, fmt.Errorf("frame: %w: %d", ErrUnknownType, uint8(t))
}

// DecodePayload decodes b as the payload of a frame of type t.
func DecodePayload(t Type, b []byte) (Payload, error) {
	p, err := NewPayload(t)
	if err != nil {
		return nil, err
	}
	if err := p.UnmarshalBinary(b); err != nil {
		return nil, err
	}
	return p, nil
}

// marshal is the shared MarshalBinary: encoding is always through AppendBinary.
func marshal(p encoding.BinaryAppender) ([]byte, error) {
	b, err := p.AppendBinary(nil)
	if err != nil {
		return nil, err
	}
	return b, nil
}

// FeatureFileDelta in a standby's Hello says that it rebuilds files from FileDelta
// frames; a primary sends changed files whole to a standby that does not say so.
const FeatureFileDelta = "file-delta"

// HelloRoleLive is the Role of a standby's Hello that refuses the primary: the
// service runs on the standby's host now (it took over), so the sender is no
// primary any more and must stop its copy. The standby closes the connection after
// it; LastCommitted is the newest epoch it holds of the service.
const HelloRoleLive = "live"

// HelloRoleBooting is the Role of the Hello with which a `ftrun run` that is deciding
// its role at boot answers a peer deciding too: both Hellos then carry a Feature
// starting with FeatureBootClaim that says what the sender holds, and the connection
// ends after the answer.
const HelloRoleBooting = "booting"

// FeatureLiveSince starts a Feature of a live copy's Hello, a primary's or the
// refusing standby's: "live-since=N", N the epoch that copy took the service over
// from. When two live copies meet after a partition, the one that took over later
// (from the other's stream, so from a newer epoch) is the one clients were using;
// the other one yields. A copy that never took over states none (0).
const FeatureLiveSince = "live-since="

// FeatureAckFromMemory in a primary's Hello asks the standby to ack each epoch once it
// is complete and verified in memory (the page cache), without waiting for the disk:
// see `ftrun run --standby-durability`. A standby that does not know it acks from
// disk, which is never less.
const FeatureAckFromMemory = "ack-from-memory"

// FeatureBootClaim starts the Feature in which a booting host states its claim (see
// supervisor.Claim). A standby ignores it and answers as to any primary.
const FeatureBootClaim = "boot?"

// Hello opens a connection in both directions: who is talking and what it already has.
type Hello struct {
	Version uint8
	// Service names the protected program, so a standby serving several primaries
	// files the stream under the right one.
	Service string
	Host    string
	// Role is the sender's role ("primary" or "standby", see Role.String), or
	// HelloRoleLive from a standby that runs the service itself.
	Role string
	// LastCommitted is the newest epoch the sender knows to be committed on the
	// standby; the primary bases its next delta on the standby's answer.
	LastCommitted uint64
	Features      []string
}

func (*Hello) Type() Type                       { return TypeHello }
func (p *Hello) MarshalBinary() ([]byte, error) { return marshal(p) }
func (p *Hello) AppendBinary(b []byte) ([]byte, error) {
	if err := p.validate(); err != nil {
		return b, encodeErr(TypeHello, err)
	}
	e := newEnc(b)
	e.u8(p.Version)
	e.str("Service", p.Service)
	e.str("Host", p.Host)
	e.str("Role", p.Role)
	e.u64(p.LastCommitted)
	e.count("Features", len(p.Features))
	for _, f := range p.Features {
		e.str("Feature", f)
	}
	return e.result(TypeHello)
}

func (p *Hello) UnmarshalBinary(b []byte) error {
	d := dec{b: b}
	var v Hello
	v.Version = d.u8("Version")
	v.Service = d.str("Service")
	v.Host = d.str("Host")
	v.Role = d.str("Role")
	v.LastCommitted = d.u64("LastCommitted")
	if n := d.count("Features", 4); n > 0 {
		v.Features = make([]string, n)
		for i := range v.Features {
			v.Features[i] = d.str("Feature")
		}
	}
	if d.err == nil {
		d.err = v.validate()
	}
	if err := d.done(TypeHello); err != nil {
		return err
	}
	*p = v
	return nil
}

func (p *Hello) validate() error {
	for i, f := range p.Features {
		if f == "" {
			return fmt.Errorf("Features[%d] is empty", i)
		}
	}
	return nil
}

// EpochBegin opens an epoch. A full epoch stands alone; a delta epoch is only
// meaningful on top of BaseEpoch, which the standby must hold committed.
type EpochBegin struct {
	Full      bool
	BaseEpoch uint64
	// Files is how many image files the epoch will carry, whole (ImageData) or as
	// changed blocks (FileDelta), so the store can tell a complete epoch from one whose
	// stream was cut short.
	Files uint32
}

func (*EpochBegin) Type() Type                       { return TypeEpochBegin }
func (p *EpochBegin) MarshalBinary() ([]byte, error) { return marshal(p) }
func (p *EpochBegin) AppendBinary(b []byte) ([]byte, error) {
	if err := p.validate(); err != nil {
		return b, encodeErr(TypeEpochBegin, err)
	}
	e := newEnc(b)
	e.bool(p.Full)
	e.u64(p.BaseEpoch)
	e.u32(p.Files)
	return e.result(TypeEpochBegin)
}

func (p *EpochBegin) UnmarshalBinary(b []byte) error {
	d := dec{b: b}
	var v EpochBegin
	v.Full = d.bool("Full")
	v.BaseEpoch = d.u64("BaseEpoch")
	v.Files = d.u32("Files")
	if d.err == nil {
		d.err = v.validate()
	}
	if err := d.done(TypeEpochBegin); err != nil {
		return err
	}
	*p = v
	return nil
}

// validate keeps the two kinds apart: epoch 0 means "none", so a delta against it
// has no base, and a full epoch naming a base would be ambiguous.
func (p *EpochBegin) validate() error {
	switch {
	case p.Full && p.BaseEpoch != 0:
		return fmt.Errorf("full epoch names base epoch %d", p.BaseEpoch)
	case !p.Full && p.BaseEpoch == 0:
		return fmt.Errorf("delta epoch has no base epoch")
	}
	return nil
}

// ImageData is one chunk of a whole image file, for files sent as they are rather
// than as a delta. Chunks of a file arrive in order; Last marks its final chunk.
type ImageData struct {
	Name   string
	Offset uint64
	Data   []byte
	Last   bool
}

func (*ImageData) Type() Type                       { return TypeImageData }
func (p *ImageData) MarshalBinary() ([]byte, error) { return marshal(p) }
func (p *ImageData) AppendBinary(b []byte) ([]byte, error) {
	if err := p.validate(); err != nil {
		return b, encodeErr(TypeImageData, err)
	}
	e := newEnc(b)
	e.str("Name", p.Name)
	e.u64(p.Offset)
	e.bytes("Data", p.Data)
	e.bool(p.Last)
	return e.result(TypeImageData)
}

func (p *ImageData) UnmarshalBinary(b []byte) error {
	d := dec{b: b}
	var v ImageData
	v.Name = d.str("Name")
	v.Offset = d.u64("Offset")
	v.Data = d.bytes("Data")
	v.Last = d.bool("Last")
	if d.err == nil {
		d.err = v.validate()
	}
	if err := d.done(TypeImageData); err != nil {
		return err
	}
	*p = v
	return nil
}

func (p *ImageData) validate() error {
	if err := checkImageName("Name", p.Name); err != nil {
		return err
	}
	if p.Offset > math.MaxUint64-uint64(len(p.Data)) {
		return fmt.Errorf("chunk at offset %d of %d bytes overflows", p.Offset, len(p.Data))
	}
	return nil
}

// checkImageName refuses anything but a plain file name: image names become file
// names in the standby's store, and a name with a separator could write elsewhere.
func checkImageName(field, name string) error {
	switch {
	case name == "", name == ".", name == "..":
		return fmt.Errorf("%s %q is not a file name", field, name)
	case strings.ContainsAny(name, "/\x00"):
		return fmt.Errorf("%s %q contains '/' or NUL", field, name)
	}
	return nil
}

// PageRun is a run of whole pages at Vaddr whose contents changed since the base epoch.
type PageRun struct {
	Vaddr uint64
	Data  []byte
}

// CopyRun is a run of NrPages pages at Vaddr that are the same as in the base epoch,
// so the standby copies them from there instead of receiving them again.
type CopyRun struct {
	Vaddr   uint64
	NrPages uint32
}

// PageDelta is the memory of one pagemap (one process's pages image) relative to the
// base epoch: what changed travels in Pages, what did not is named in CopyRuns.
type PageDelta struct {
	Pagemap  string
	Pages    []PageRun
	CopyRuns []CopyRun
}

func (*PageDelta) Type() Type                       { return TypePageDelta }
func (p *PageDelta) MarshalBinary() ([]byte, error) { return marshal(p) }
func (p *PageDelta) AppendBinary(b []byte) ([]byte, error) {
	if err := p.validate(); err != nil {
		return b, encodeErr(TypePageDelta, err)
	}
	e := newEnc(b)
	e.str("Pagemap", p.Pagemap)
	e.count("Pages", len(p.Pages))
	for _, r := range p.Pages {
		e.u64(r.Vaddr)
		e.bytes("Pages.Data", r.Data)
	}
	e.count("CopyRuns", len(p.CopyRuns))
	for _, r := range p.CopyRuns {
		e.u64(r.Vaddr)
		e.u32(r.NrPages)
	}
	return e.result(TypePageDelta)
}

func (p *PageDelta) UnmarshalBinary(b []byte) error {
	d := dec{b: b}
	var v PageDelta
	v.Pagemap = d.str("Pagemap")
	if n := d.count("Pages", 8+4); n > 0 {
		v.Pages = make([]PageRun, n)
		for i := range v.Pages {
			v.Pages[i].Vaddr = d.u64("Pages.Vaddr")
			v.Pages[i].Data = d.bytes("Pages.Data")
		}
	}
	if n := d.count("CopyRuns", 8+4); n > 0 {
		v.CopyRuns = make([]CopyRun, n)
		for i := range v.CopyRuns {
			v.CopyRuns[i].Vaddr = d.u64("CopyRuns.Vaddr")
			v.CopyRuns[i].NrPages = d.u32("CopyRuns.NrPages")
		}
	}
	if d.err == nil {
		d.err = v.validate()
	}
	if err := d.done(TypePageDelta); err != nil {
		return err
	}
	*p = v
	return nil
}

func (p *PageDelta) validate() error {
	if err := checkImageName("Pagemap", p.Pagemap); err != nil {
		return err
	}
	for i, r := range p.Pages {
		n := uint64(len(r.Data))
		switch {
		case n == 0 || n%PageSize != 0:
			return fmt.Errorf("Pages[%d]: %d bytes is not a whole, non-zero number of pages", i, n)
		case r.Vaddr%PageSize != 0:
			return fmt.Errorf("Pages[%d]: vaddr %#x is not page aligned", i, r.Vaddr)
		case r.Vaddr > math.MaxUint64-n:
			return fmt.Errorf("Pages[%d]: %d bytes at %#x overflow the address space", i, n, r.Vaddr)
		}
	}
	for i, r := range p.CopyRuns {
		n := uint64(r.NrPages) * PageSize
		switch {
		case r.NrPages == 0:
			return fmt.Errorf("CopyRuns[%d]: empty run", i)
		case r.Vaddr%PageSize != 0:
			return fmt.Errorf("CopyRuns[%d]: vaddr %#x is not page aligned", i, r.Vaddr)
		case r.Vaddr > math.MaxUint64-n:
			return fmt.Errorf("CopyRuns[%d]: %d pages at %#x overflow the address space", i, r.NrPages, r.Vaddr)
		}
	}
	return nil
}

// Block is a changed byte range of a file.
type Block struct {
	Offset uint64
	Data   []byte
}

// FileDelta brings one file of the image set, such as the copy of one of the program's
// state files, from its state in the base epoch to this one: its new size (a file cut
// short or grown), its mode, and the blocks that changed since the base; the receiver
// takes every other byte from its base copy. Path is the file's name in the set. A
// large file's blocks may travel in several FileDeltas of the same Path and Size.
type FileDelta struct {
	Path   string
	Size   uint64
	Mode   uint32
	Blocks []Block
	// Deleted says the file is gone. An image set's receiver has no use for it (a file
	// the epoch's manifest does not list is simply not taken from the base) and
	// refuses it.
	Deleted bool
}

func (*FileDelta) Type() Type                       { return TypeFileDelta }
func (p *FileDelta) MarshalBinary() ([]byte, error) { return marshal(p) }
func (p *FileDelta) AppendBinary(b []byte) ([]byte, error) {
	if err := p.validate(); err != nil {
		return b, encodeErr(TypeFileDelta, err)
	}
	e := newEnc(b)
	e.str("Path", p.Path)
	e.u64(p.Size)
	e.u32(p.Mode)
	e.count("Blocks", len(p.Blocks))
	for _, bl := range p.Blocks {
		e.u64(bl.Offset)
		e.bytes("Blocks.Data", bl.Data)
	}
	e.bool(p.Deleted)
	return e.result(TypeFileDelta)
}

func (p *FileDelta) UnmarshalBinary(b []byte) error {
	d := dec{b: b}
	var v FileDelta
	v.Path = d.str("Path")
	v.Size = d.u64("Size")
	v.Mode = d.u32("Mode")
	if n := d.count("Blocks", 8+4); n > 0 {
		v.Blocks = make([]Block, n)
		for i := range v.Blocks {
			v.Blocks[i].Offset = d.u64("Blocks.Offset")
			v.Blocks[i].Data = d.bytes("Blocks.Data")
		}
	}
	v.Deleted = d.bool("Deleted")
	if d.err == nil {
		d.err = v.validate()
	}
	if err := d.done(TypeFileDelta); err != nil {
		return err
	}
	*p = v
	return nil
}

func (p *FileDelta) validate() error {
	switch {
	case p.Path == "":
		return fmt.Errorf("empty Path")
	case strings.IndexByte(p.Path, 0) >= 0:
		return fmt.Errorf("Path %q contains NUL", p.Path)
	case p.Deleted && len(p.Blocks) != 0:
		return fmt.Errorf("deleted file %q carries %d blocks", p.Path, len(p.Blocks))
	}
	for i, bl := range p.Blocks {
		n := uint64(len(bl.Data))
		switch {
		case n == 0:
			return fmt.Errorf("Blocks[%d] of %q is empty", i, p.Path)
		case bl.Offset > p.Size || n > p.Size-bl.Offset:
			return fmt.Errorf("Blocks[%d] of %q: %d bytes at %d lie beyond its size %d", i, p.Path, n, bl.Offset, p.Size)
		}
	}
	return nil
}

// EpochCommit closes an epoch. The manifest (the checkpoint package's JSON) is opaque
// here: the store checks the received files against it before committing.
type EpochCommit struct {
	Manifest []byte
}

func (*EpochCommit) Type() Type                       { return TypeEpochCommit }
func (p *EpochCommit) MarshalBinary() ([]byte, error) { return marshal(p) }
func (p *EpochCommit) AppendBinary(b []byte) ([]byte, error) {
	e := newEnc(b)
	e.bytes("Manifest", p.Manifest)
	return e.result(TypeEpochCommit)
}

func (p *EpochCommit) UnmarshalBinary(b []byte) error {
	d := dec{b: b}
	var v EpochCommit
	v.Manifest = d.bytes("Manifest")
	if err := d.done(TypeEpochCommit); err != nil {
		return err
	}
	*p = v
	return nil
}

// FeatureAckPhases in a primary's Hello says that it reads the standby's phase
// durations in an Ack (AckPhases); a standby sends them only to a primary that says
// so, since an older primary refuses an Ack longer than its epoch.
const FeatureAckPhases = "ack-phases"

// Ack tells the primary that Epoch is durably committed on the standby: the output
// it covers may now be released.
type Ack struct {
	Epoch uint64
	// Phases is how long the standby's commit of the epoch took, part by part; nil
	// from a standby that does not report them (or to a primary that did not ask).
	Phases *AckPhases
}

// AckPhases is what the standby measured of one commit, in nanoseconds: rebuilding
// the set from its base and the delta, checking it against the manifest, and making
// it durable. It travels after the epoch as three u64s.
type AckPhases struct {
	ApplyNs, VerifyNs, DurableNs uint64
}

func (*Ack) Type() Type                       { return TypeAck }
func (p *Ack) MarshalBinary() ([]byte, error) { return marshal(p) }
func (p *Ack) AppendBinary(b []byte) ([]byte, error) {
	e := newEnc(b)
	e.u64(p.Epoch)
	if ph := p.Phases; ph != nil {
		e.u64(ph.ApplyNs)
		e.u64(ph.VerifyNs)
		e.u64(ph.DurableNs)
	}
	return e.result(TypeAck)
}

func (p *Ack) UnmarshalBinary(b []byte) error {
	d := dec{b: b}
	var v Ack
	v.Epoch = d.u64("Epoch")
	if d.err == nil && len(d.b) > 0 {
		// The only optional part of any payload: an Ack of exactly 8 bytes is a
		// plain one, of 32 one with phases; anything else is refused by done.
		v.Phases = &AckPhases{ApplyNs: d.u64("ApplyNs"), VerifyNs: d.u64("VerifyNs"), DurableNs: d.u64("DurableNs")}
	}
	if err := d.done(TypeAck); err != nil {
		return err
	}
	*p = v
	return nil
}

// NackCode says why the standby refused an epoch, which decides what the primary
// does next (send a full epoch, wait for space, give up on the standby).
type NackCode uint16

// Nack codes. 0 is unused so that a zeroed field is never a valid answer.
const (
	// NackDiskFull: the standby could not store the epoch; retrying later may work.
	NackDiskFull NackCode = iota + 1
	// NackBadBase: the delta's base epoch is not held; send a full epoch.
	NackBadBase
	// NackCorrupt: the epoch's files did not match its manifest.
	NackCorrupt
	// NackInternal: any other failure on the standby.
	NackInternal
)

var nackNames = [...]string{
	NackDiskFull: "DiskFull",
	NackBadBase:  "BadBase",
	NackCorrupt:  "Corrupt",
	NackInternal: "Internal",
}

// Valid reports whether c is a code this version of the protocol defines.
func (c NackCode) Valid() bool { return c >= NackDiskFull && c <= NackInternal }

func (c NackCode) String() string {
	if c.Valid() {
		return nackNames[c]
	}
	return fmt.Sprintf("NackCode(%d)", uint16(c))
}

// Nack tells the primary that Epoch was not committed, and why.
type Nack struct {
	Epoch  uint64
	Code   NackCode
	Reason string
}

func (*Nack) Type() Type                       { return TypeNack }
func (p *Nack) MarshalBinary() ([]byte, error) { return marshal(p) }
func (p *Nack) AppendBinary(b []byte) ([]byte, error) {
	if err := p.validate(); err != nil {
		return b, encodeErr(TypeNack, err)
	}
	e := newEnc(b)
	e.u64(p.Epoch)
	e.u16(uint16(p.Code))
	e.str("Reason", p.Reason)
	return e.result(TypeNack)
}

func (p *Nack) UnmarshalBinary(b []byte) error {
	d := dec{b: b}
	var v Nack
	v.Epoch = d.u64("Epoch")
	v.Code = NackCode(d.u16("Code"))
	v.Reason = d.str("Reason")
	if d.err == nil {
		d.err = v.validate()
	}
	if err := d.done(TypeNack); err != nil {
		return err
	}
	*p = v
	return nil
}

func (p *Nack) validate() error {
	if !p.Code.Valid() {
		return fmt.Errorf("unknown code %d", uint16(p.Code))
	}
	return nil
}

// Heartbeat keeps a quiet connection provably alive and carries enough to estimate
// lag: when it was sent and the sender's view of the last committed epoch.
type Heartbeat struct {
	SentUnixNano int64
	Committed    uint64
}

func (*Heartbeat) Type() Type                       { return TypeHeartbeat }
func (p *Heartbeat) MarshalBinary() ([]byte, error) { return marshal(p) }
func (p *Heartbeat) AppendBinary(b []byte) ([]byte, error) {
	e := newEnc(b)
	e.u64(uint64(p.SentUnixNano))
	e.u64(p.Committed)
	return e.result(TypeHeartbeat)
}

func (p *Heartbeat) UnmarshalBinary(b []byte) error {
	d := dec{b: b}
	var v Heartbeat
	v.SentUnixNano = int64(d.u64("SentUnixNano"))
	v.Committed = d.u64("Committed")
	if err := d.done(TypeHeartbeat); err != nil {
		return err
	}
	*p = v
	return nil
}

// ResyncRequest asks the primary for a full epoch, e.g. after the standby lost or
// refused its base. HaveEpoch is the newest epoch the standby still holds.
type ResyncRequest struct {
	Reason    string
	HaveEpoch uint64
}

func (*ResyncRequest) Type() Type                       { return TypeResyncRequest }
func (p *ResyncRequest) MarshalBinary() ([]byte, error) { return marshal(p) }
func (p *ResyncRequest) AppendBinary(b []byte) ([]byte, error) {
	e := newEnc(b)
	e.str("Reason", p.Reason)
	e.u64(p.HaveEpoch)
	return e.result(TypeResyncRequest)
}

func (p *ResyncRequest) UnmarshalBinary(b []byte) error {
	d := dec{b: b}
	var v ResyncRequest
	v.Reason = d.str("Reason")
	v.HaveEpoch = d.u64("HaveEpoch")
	if err := d.done(TypeResyncRequest); err != nil {
		return err
	}
	*p = v
	return nil
}
