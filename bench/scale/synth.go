// synth: the synthetic upstream and the filling client of `bench/run --scale`.
//
// Why a separate program, and why Go: the --scale profile fills berth with a
// million objects through its own API, so the upstream must answer a few
// thousand requests a second on a machine whose two cores berth itself
// needs. Python cannot, and this program is the standard library only
// (Debian's golang-go builds it in a second), apart from the product's Rust
// build.
//
//	synth upstream -listen 127.0.0.1:PORT -images N
//	    An OCI registry (GET/HEAD /v2/, manifests by tag and digest, blobs)
//	    holding N generated images of three objects each (manifest, config,
//	    one small layer); everything else answers an OCI 404, as a registry
//	    without the referrers API does. Image i is tag t<i> of repository
//	    scale/r<i/per_repo>; its bytes are a function of i alone, so any
//	    number of processes agree on them without sharing a file.
//
//	synth fill -mirror URL -from A -to B [-conns C]
//	    Pulls images A..B-1 through a mirror as a runtime would (manifest
//	    by tag, then config and layer by digest), checking status, length
//	    and digest of every answer; prints one JSON line of counts.
//
// The Python harness (berthbench/scale.py) computes the same names.
package main

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

const (
	manifestType = "application/vnd.oci.image.manifest.v1+json"
	configType   = "application/vnd.oci.image.config.v1+json"
	layerType    = "application/vnd.oci.image.layer.v1.tar"
)

var perRepo = flag.Int("per-repo", 100, "images per repository")
var layerSize = flag.Int("layer-size", 512, "bytes of each image's layer")

func repoOf(i int) string { return fmt.Sprintf("scale/r%05d", i / *perRepo) }
func tagOf(i int) string  { return "t" + strconv.Itoa(i) }

// layer is image i's only layer: deterministic, incompressible bytes
// (splitmix64 seeded with i: cheap, so a million are indexed in seconds).
func layer(i int) []byte {
	out := make([]byte, *layerSize+8)
	x := uint64(i)*0x9E3779B97F4A7C15 + 1
	for at := 0; at < *layerSize; at += 8 {
		x += 0x9E3779B97F4A7C15
		z := x
		z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
		z = (z ^ (z >> 27)) * 0x94D049BB133111EB
		binary.LittleEndian.PutUint64(out[at:], z^(z>>31))
	}
	return out[:*layerSize]
}

func digestOf(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

func config(layerDigest string) []byte {
	return []byte(`{"architecture":"amd64","config":{},"os":"linux","rootfs":{"diff_ids":["` +
		layerDigest + `"],"type":"layers"}}`)
}

func manifest(cfg []byte, lay []byte) []byte {
	return []byte(fmt.Sprintf(`{"config":{"digest":"%s","mediaType":"%s","size":%d},`+
		`"layers":[{"digest":"%s","mediaType":"%s","size":%d}],"mediaType":"%s","schemaVersion":2}`,
		digestOf(cfg), configType, len(cfg), digestOf(lay), layerType, len(lay), manifestType))
}

// image is image i's three objects.
type image struct{ manifest, config, layer []byte }

func build(i int) image {
	l := layer(i)
	c := config(digestOf(l))
	return image{manifest(c, l), c, l}
}

// Object kinds in the digest index.
const (
	kindManifest = iota
	kindConfig
	kindLayer
)

type ref struct {
	image uint32
	kind  uint8
}

// upstream answers for N images; the digest index is built at start.
type upstream struct {
	images   int
	index    map[[32]byte]ref
	requests atomic.Int64
}

func newUpstream(n int) *upstream {
	u := &upstream{images: n, index: make(map[[32]byte]ref, 3*n)}
	for i := 0; i < n; i++ {
		img := build(i)
		for kind, b := range [][]byte{img.manifest, img.config, img.layer} {
			u.index[sha256.Sum256(b)] = ref{uint32(i), uint8(kind)}
		}
	}
	return u
}

func notFound(w http.ResponseWriter, code, what string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusNotFound)
	fmt.Fprintf(w, `{"errors":[{"code":"%s","message":"%s unknown"}]}`, code, what)
}

// lookupDigest finds a stored object by "sha256:<hex>" in repository repo.
func (u *upstream) lookupDigest(repo, digest string) (ref, bool) {
	hexPart := strings.TrimPrefix(digest, "sha256:")
	if !strings.HasPrefix(digest, "sha256:") || len(hexPart) != 64 {
		return ref{}, false
	}
	var key [32]byte
	if _, err := hex.Decode(key[:], []byte(hexPart)); err != nil {
		return ref{}, false
	}
	r, ok := u.index[key]
	if !ok || repoOf(int(r.image)) != repo {
		return ref{}, false
	}
	return r, true
}

// lookupTag finds image i from tag t<i> in its repository.
func (u *upstream) lookupTag(repo, tag string) (int, bool) {
	n, err := strconv.Atoi(strings.TrimPrefix(tag, "t"))
	if !strings.HasPrefix(tag, "t") || err != nil || n < 0 || n >= u.images || repoOf(n) != repo {
		return 0, false
	}
	return n, true
}

func (u *upstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	u.requests.Add(1)
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.WriteHeader(http.StatusMethodNotAllowed)
		return
	}
	path := r.URL.Path
	if path == "/v2/" || path == "/v2" {
		w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
		w.Write([]byte("{}"))
		return
	}
	rest := strings.TrimPrefix(path, "/v2/")
	if !strings.HasPrefix(path, "/v2/") {
		notFound(w, "NAME_UNKNOWN", "path")
		return
	}
	var body []byte
	var mediaType string
	if i := strings.LastIndex(rest, "/manifests/"); i > 0 {
		repo, reference := rest[:i], rest[i+len("/manifests/"):]
		n, found := u.lookupTag(repo, reference)
		if !found {
			if r, ok := u.lookupDigest(repo, reference); ok && r.kind == kindManifest {
				n, found = int(r.image), true
			}
		}
		if !found {
			notFound(w, "MANIFEST_UNKNOWN", "manifest")
			return
		}
		body, mediaType = build(n).manifest, manifestType
	} else if i := strings.LastIndex(rest, "/blobs/"); i > 0 {
		r, found := u.lookupDigest(rest[:i], rest[i+len("/blobs/"):])
		if !found || r.kind == kindManifest {
			notFound(w, "BLOB_UNKNOWN", "blob")
			return
		}
		img := build(int(r.image))
		body, mediaType = img.layer, "application/octet-stream"
		if r.kind == kindConfig {
			body = img.config
		}
	} else {
		notFound(w, "NAME_UNKNOWN", "repository")
		return
	}
	h := w.Header()
	h.Set("Content-Type", mediaType)
	h.Set("Content-Length", strconv.Itoa(len(body)))
	h.Set("Docker-Content-Digest", digestOf(body))
	if r.Method == http.MethodGet {
		w.Write(body)
	}
}

func runUpstream(args []string) {
	fs := flag.NewFlagSet("upstream", flag.ExitOnError)
	listen := fs.String("listen", "127.0.0.1:0", "address to listen on")
	images := fs.Int("images", 1000, "images to serve")
	fs.Parse(args)
	started := time.Now()
	u := newUpstream(*images)
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	// The harness waits for this line: the index is built, the port open.
	fmt.Printf("listening %s images %d index_seconds %.2f\n", ln.Addr(), *images,
		time.Since(started).Seconds())
	os.Stdout.Sync()
	log.Fatal(http.Serve(ln, u))
}

// fillResult is what `fill` prints.
type fillResult struct {
	Images   int64   `json:"images"`
	Requests int64   `json:"requests"`
	Retried  int64   `json:"retried_503"`
	Failures int64   `json:"failures"`
	First    string  `json:"first_failure,omitempty"`
	Seconds  float64 `json:"seconds"`
}

type filler struct {
	base     string
	client   *http.Client
	requests atomic.Int64
	retried  atomic.Int64
	failures atomic.Int64
	first    sync.Once
	firstErr string
}

func (f *filler) fail(err error) {
	f.failures.Add(1)
	f.first.Do(func() { f.firstErr = err.Error() })
}

// get fetches path and checks that the answer is want, byte for byte. A
// 503 (berth at limits.max_fills while earlier fills still commit) is
// retried after a pause, as registry clients do; the retries are counted.
func (f *filler) get(path string, want []byte, accept string) error {
	var err error
	for attempt := 1; attempt <= 50; attempt++ {
		var busy bool
		busy, err = f.getOnce(path, want, accept)
		if !busy {
			return err
		}
		f.retried.Add(1)
		time.Sleep(time.Duration(attempt) * 20 * time.Millisecond)
	}
	return err
}

func (f *filler) getOnce(path string, want []byte, accept string) (bool, error) {
	busy := false
	err := f.getChecked(path, want, accept, func(status int) { busy = status == http.StatusServiceUnavailable })
	return busy, err
}

func (f *filler) getChecked(path string, want []byte, accept string, status func(int)) error {
	req, err := http.NewRequest(http.MethodGet, f.base+path, nil)
	if err != nil {
		return err
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	f.requests.Add(1)
	resp, err := f.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, int64(len(want))+1))
	if err != nil {
		return fmt.Errorf("GET %s: %w", path, err)
	}
	status(resp.StatusCode)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: HTTP %d %.200s", path, resp.StatusCode, body)
	}
	if digestOf(body) != digestOf(want) {
		return fmt.Errorf("GET %s: %d bytes that are not the pushed ones", path, len(body))
	}
	return nil
}

func (f *filler) pull(i int) error {
	img := build(i)
	repo := repoOf(i)
	if err := f.get("/v2/"+repo+"/manifests/"+tagOf(i), img.manifest, manifestType); err != nil {
		return err
	}
	for _, blob := range [][]byte{img.config, img.layer} {
		if err := f.get("/v2/"+repo+"/blobs/"+digestOf(blob), blob, ""); err != nil {
			return err
		}
	}
	return nil
}

func runFill(args []string) {
	fs := flag.NewFlagSet("fill", flag.ExitOnError)
	mirror := fs.String("mirror", "", "the mirror's base URL")
	from := fs.Int("from", 0, "first image")
	to := fs.Int("to", 0, "image after the last")
	conns := fs.Int("conns", 16, "images pulled at once")
	fs.Parse(args)
	f := &filler{base: strings.TrimRight(*mirror, "/"), client: &http.Client{
		Timeout: 60 * time.Second,
		Transport: &http.Transport{MaxIdleConnsPerHost: *conns, MaxConnsPerHost: *conns,
			DisableCompression: true},
	}}
	started := time.Now()
	next := atomic.Int64{}
	next.Store(int64(*from))
	var done atomic.Int64
	var wg sync.WaitGroup
	for c := 0; c < *conns; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= *to {
					return
				}
				if err := f.pull(i); err != nil {
					f.fail(err)
				} else {
					done.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	out, _ := json.Marshal(fillResult{Images: done.Load(), Requests: f.requests.Load(),
		Retried: f.retried.Load(), Failures: f.failures.Load(), First: f.firstErr, Seconds: time.Since(started).Seconds()})
	fmt.Println(string(out))
}

func main() {
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: synth [-per-repo N] [-layer-size B] upstream|fill [flags]")
	}
	flag.Parse()
	if flag.NArg() < 1 {
		flag.Usage()
		os.Exit(64)
	}
	switch flag.Arg(0) {
	case "upstream":
		runUpstream(flag.Args()[1:])
	case "fill":
		runFill(flag.Args()[1:])
	default:
		flag.Usage()
		os.Exit(64)
	}
}
