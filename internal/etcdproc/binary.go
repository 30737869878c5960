package etcdproc

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
)

// modulePath is the module whose bin/etcd Binary looks for.
const modulePath = "github.com/chanwatch/chanwatch"

// EnvBinary names the environment variable that points at an etcd binary,
// overriding the search.
const EnvBinary = "CHANWATCH_ETCD_BIN"

var binMu sync.Mutex

// Binary returns the path of the etcd binary to run: $CHANWATCH_ETCD_BIN
// when set (it must exist), else bin/etcd at the root of the chanwatch
// module that contains the working directory. When that file is missing it
// builds it (`go build -o bin/etcd go.etcd.io/etcd/server/v3`, the same
// command as `make etcd`), into a temporary name renamed into place, so
// test binaries that build at once do not clash. It fails when neither
// exists and no go tool or module root is found.
func Binary() (string, error) {
	if p := os.Getenv(EnvBinary); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("etcdproc: $%s: %w", EnvBinary, err)
		}
		return p, nil
	}
	wd, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("etcdproc: %w", err)
	}
	root, err := moduleRoot(wd)
	if err != nil {
		return "", err
	}
	bin := filepath.Join(root, "bin", "etcd")
	binMu.Lock()
	defer binMu.Unlock()
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	if err := build(root, bin); err != nil {
		return "", err
	}
	return bin, nil
}

// moduleRoot walks up from dir to the directory whose go.mod declares the
// chanwatch module.
func moduleRoot(dir string) (string, error) {
	for d := dir; ; {
		if isModuleRoot(filepath.Join(d, "go.mod")) {
			return d, nil
		}
		parent := filepath.Dir(d)
		if parent == d {
			return "", fmt.Errorf("etcdproc: no etcd binary: %s is not inside the %s module; run `make etcd` there, or set $%s", dir, modulePath, EnvBinary)
		}
		d = parent
	}
}

func isModuleRoot(gomod string) bool {
	f, err := os.Open(gomod)
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fields := strings.Fields(sc.Text()); len(fields) == 2 && fields[0] == "module" {
			return fields[1] == modulePath
		}
	}
	return false
}

func build(root, bin string) error {
	gotool, err := exec.LookPath("go")
	if err != nil {
		gotool = filepath.Join(runtime.GOROOT(), "bin", "go")
		if _, serr := os.Stat(gotool); serr != nil {
			return fmt.Errorf("etcdproc: %s is missing and no go tool to build it: %w", bin, errors.Join(err, serr))
		}
	}
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		return fmt.Errorf("etcdproc: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(bin), ".etcd-build-*")
	if err != nil {
		return fmt.Errorf("etcdproc: %w", err)
	}
	tmp.Close()
	defer os.Remove(tmp.Name())
	cmd := exec.Command(gotool, "build", "-o", tmp.Name(), "go.etcd.io/etcd/server/v3")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("etcdproc: build %s: %w: %s", bin, err, out)
	}
	if err := os.Rename(tmp.Name(), bin); err != nil {
		return fmt.Errorf("etcdproc: %w", err)
	}
	return nil
}
