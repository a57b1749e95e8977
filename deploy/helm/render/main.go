// Command render is `helm template` for CI machines without a helm binary.
//
// It renders a Helm v3 chart with the same engine Helm uses: Go's text/template, the sprig v3
// function map minus env/expandenv, and Helm's own functions (include, tpl, required, toYaml,
// fromYaml, toJson, fromJson, toToml, lookup), option missingkey=zero and "<no value>" erased, as
// helm/pkg/engine does. Values are coalesced like helm (chart values.yaml, then each -f file,
// then --set/--set-string; null deletes a default) and validated against values.schema.json with
// xeipuuv/gojsonschema (the validator of Helm 3 up to 3.17). .Release, .Chart, .Capabilities,
// .Template and .Files (Get, GetBytes, Glob, Lines, AsConfig, AsSecrets; .helmignore honoured,
// symbolic links followed) behave as in Helm. NOTES.txt is rendered (so its errors fail) but not
// printed, unless --notes. Output documents are "---\n# Source: <chart>/templates/<file>" blocks
// in Helm's install order.
//
// Build (offline, Debian's packages; see scripts/prereqs.sh):  deploy/helm/render/build.sh
// Usage: render template RELEASE CHART_DIR [-n NS] [-f values.yaml]... [--set k=v]...
//
//	[--set-string k=v]... [--kube-version v1.31.0] [--api-versions g/v]... [--show-only path]
//	[--notes] [--is-upgrade]
package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"text/template"

	"github.com/BurntSushi/toml"
	"github.com/Masterminds/semver/v3"
	"github.com/Masterminds/sprig/v3"
	"github.com/xeipuuv/gojsonschema"
	"sigs.k8s.io/yaml"
)

// ---- chart model (field names as in helm.sh/helm/v3/pkg/chart) ---------------------------------

// Metadata is Chart.yaml, exposed as .Chart.
type Metadata struct {
	Name         string            `json:"name,omitempty"`
	Home         string            `json:"home,omitempty"`
	Sources      []string          `json:"sources,omitempty"`
	Version      string            `json:"version,omitempty"`
	Description  string            `json:"description,omitempty"`
	Keywords     []string          `json:"keywords,omitempty"`
	Maintainers  []interface{}     `json:"maintainers,omitempty"`
	Icon         string            `json:"icon,omitempty"`
	APIVersion   string            `json:"apiVersion,omitempty"`
	Condition    string            `json:"condition,omitempty"`
	Tags         string            `json:"tags,omitempty"`
	AppVersion   string            `json:"appVersion,omitempty"`
	Deprecated   bool              `json:"deprecated,omitempty"`
	Annotations  map[string]string `json:"annotations,omitempty"`
	KubeVersion  string            `json:"kubeVersion,omitempty"`
	Dependencies []interface{}     `json:"dependencies,omitempty"`
	Type         string            `json:"type,omitempty"`
}

// Release is .Release for `helm template`.
type Release struct {
	Name      string
	Namespace string
	IsUpgrade bool
	IsInstall bool
	Revision  int
	Service   string
}

// KubeVersion is .Capabilities.KubeVersion.
type KubeVersion struct {
	Version    string
	Major      string
	Minor      string
	GitVersion string
}

func (k KubeVersion) String() string { return k.Version }

// VersionSet is .Capabilities.APIVersions.
type VersionSet []string

// Has reports whether a group/version or group/version/Kind is known.
func (v VersionSet) Has(apiVersion string) bool {
	for _, x := range v {
		if x == apiVersion {
			return true
		}
	}
	return false
}

// HelmVersion is .Capabilities.HelmVersion.
type HelmVersion struct {
	Version   string
	GitCommit string
	GoVersion string
}

// Capabilities is .Capabilities.
type Capabilities struct {
	KubeVersion KubeVersion
	APIVersions VersionSet
	HelmVersion HelmVersion
}

// TemplateInfo is .Template.
type TemplateInfo struct {
	Name     string
	BasePath string
}

// Files is .Files: every chart file that is not Chart.yaml, values*, a template or ignored.
type Files map[string][]byte

// GetBytes returns a file's bytes (nil when absent).
func (f Files) GetBytes(name string) []byte { return f[name] }

// Get returns a file's text ("" when absent).
func (f Files) Get(name string) string { return string(f[name]) }

// Glob returns the files whose path matches a gobwas-style glob ('*' stays within a path segment,
// '**' crosses them).
func (f Files) Glob(pattern string) Files {
	re, err := globRegexp(pattern)
	out := Files{}
	if err != nil {
		return out
	}
	for k, v := range f {
		if re.MatchString(k) {
			out[k] = v
		}
	}
	return out
}

// AsConfig renders the files as ConfigMap data (base name -> content) in YAML.
func (f Files) AsConfig() string {
	if len(f) == 0 {
		return ""
	}
	m := map[string]string{}
	for k, v := range f {
		m[path.Base(k)] = string(v)
	}
	return toYAML(m)
}

// AsSecrets renders the files as Secret data (base name -> base64) in YAML.
func (f Files) AsSecrets() string {
	if len(f) == 0 {
		return ""
	}
	m := map[string]string{}
	for k, v := range f {
		m[path.Base(k)] = base64.StdEncoding.EncodeToString(v)
	}
	return toYAML(m)
}

// Lines returns a file split into lines.
func (f Files) Lines(p string) []string {
	if f == nil || f[p] == nil {
		return []string{}
	}
	s := string(f[p])
	if s != "" && s[len(s)-1] == '\n' {
		s = s[:len(s)-1]
	}
	return strings.Split(s, "\n")
}

func globRegexp(p string) (*regexp.Regexp, error) {
	var b strings.Builder
	b.WriteString("^")
	inClass, inAlt := false, 0
	for i := 0; i < len(p); i++ {
		c := p[i]
		switch {
		case inClass:
			if c == ']' {
				inClass = false
			}
			if c == '!' && p[i-1] == '[' {
				c = '^'
			}
			b.WriteByte(c)
		case c == '*':
			if i+1 < len(p) && p[i+1] == '*' {
				b.WriteString(".*")
				i++
			} else {
				b.WriteString("[^/]*")
			}
		case c == '?':
			b.WriteString("[^/]")
		case c == '[':
			inClass = true
			b.WriteByte(c)
		case c == '{':
			inAlt++
			b.WriteString("(?:")
		case c == '}' && inAlt > 0:
			inAlt--
			b.WriteString(")")
		case c == ',' && inAlt > 0:
			b.WriteString("|")
		case c == '\\' && i+1 < len(p):
			i++
			b.WriteString(regexp.QuoteMeta(string(p[i])))
		default:
			b.WriteString(regexp.QuoteMeta(string(c)))
		}
	}
	b.WriteString("$")
	return regexp.Compile(b.String())
}

// ---- .helmignore (helm.sh/helm/v3/internal/ignore semantics) -----------------------------------

type ignoreRule struct {
	pattern string
	negate  bool
	dirOnly bool
}

func loadIgnore(chartDir string) []ignoreRule {
	rules := []ignoreRule{{pattern: "templates/.?*", dirOnly: false}} // helm's default rule
	data, err := os.ReadFile(filepath.Join(chartDir, ".helmignore"))
	if err != nil {
		return rules
	}
	for _, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		r := ignoreRule{}
		if strings.HasPrefix(line, "!") {
			r.negate = true
			line = line[1:]
		}
		if strings.HasSuffix(line, "/") {
			r.dirOnly = true
			line = strings.TrimSuffix(line, "/")
		}
		r.pattern = strings.TrimPrefix(line, "/")
		rules = append(rules, r)
	}
	return rules
}

func ignored(rules []ignoreRule, rel string, isDir bool) bool {
	out := false
	for _, r := range rules {
		if r.dirOnly && !isDir {
			continue
		}
		var ok bool
		if strings.Contains(r.pattern, "/") {
			ok, _ = filepath.Match(r.pattern, rel)
		} else {
			ok, _ = filepath.Match(r.pattern, path.Base(rel))
		}
		if ok {
			out = !r.negate
		}
	}
	return out
}

// walk visits every regular file under root, following symbolic links (helm's sympath.Walk).
func walk(root, rel string, rules []ignoreRule, visit func(rel string, data []byte) error) error {
	entries, err := os.ReadDir(filepath.Join(root, rel))
	if err != nil {
		return err
	}
	for _, e := range entries {
		r := path.Join(rel, e.Name())
		if rel == "" {
			r = e.Name()
		}
		full := filepath.Join(root, r)
		fi, err := os.Stat(full) // follows links
		if err != nil {
			return fmt.Errorf("%s: %w", r, err)
		}
		if ignored(rules, r, fi.IsDir()) {
			continue
		}
		if fi.IsDir() {
			if err := walk(root, r, rules, visit); err != nil {
				return err
			}
			continue
		}
		if !fi.Mode().IsRegular() {
			return fmt.Errorf("cannot load irregular file %s", r)
		}
		data, err := os.ReadFile(full)
		if err != nil {
			return err
		}
		if err := visit(r, data); err != nil {
			return err
		}
	}
	return nil
}

// ---- values ---------------------------------------------------------------------------------------

// coalesce merges src over dst the way chartutil.CoalesceTables does for user values: maps merge
// recursively, anything else replaces, and a null in src deletes the key.
func coalesce(dst, src map[string]interface{}) map[string]interface{} {
	if dst == nil {
		dst = map[string]interface{}{}
	}
	for k, sv := range src {
		if sv == nil {
			delete(dst, k)
			continue
		}
		sm, sIsMap := sv.(map[string]interface{})
		dm, dIsMap := dst[k].(map[string]interface{})
		if sIsMap && dIsMap {
			dst[k] = coalesce(dm, sm)
		} else {
			dst[k] = sv
		}
	}
	return dst
}

// cleanNulls removes keys whose value is null from the chart's defaults (as helm does).
func cleanNulls(m map[string]interface{}) {
	for k, v := range m {
		if v == nil {
			delete(m, k)
		} else if sub, ok := v.(map[string]interface{}); ok {
			cleanNulls(sub)
		}
	}
}

// splitUnescaped splits s at sep characters not preceded by a backslash.
func splitUnescaped(s string, sep byte) []string {
	var out []string
	var cur strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+1 < len(s) {
			cur.WriteByte(s[i])
			cur.WriteByte(s[i+1])
			i++
			continue
		}
		if s[i] == sep {
			out = append(out, cur.String())
			cur.Reset()
			continue
		}
		cur.WriteByte(s[i])
	}
	return append(out, cur.String())
}

// splitAssignments splits a --set argument at commas outside {...} lists.
func splitAssignments(s string) []string {
	var out []string
	var cur strings.Builder
	depth := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\\' && i+1 < len(s):
			cur.WriteByte(c)
			cur.WriteByte(s[i+1])
			i++
			continue
		case c == '{':
			depth++
		case c == '}' && depth > 0:
			depth--
		case c == ',' && depth == 0:
			out = append(out, cur.String())
			cur.Reset()
			continue
		}
		cur.WriteByte(c)
	}
	return append(out, cur.String())
}

func unescape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+1 < len(s) {
			i++
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

var intRe = regexp.MustCompile(`^[-+]?(0|[1-9][0-9]*)$`)

// typed infers a --set value's type like helm's strvals: int64, bool, null, else string.
func typed(v string, asString bool) interface{} {
	if asString {
		return v
	}
	switch strings.ToLower(v) {
	case "true":
		return true
	case "false":
		return false
	case "null":
		return nil
	}
	if intRe.MatchString(v) {
		if n, err := strconv.ParseInt(v, 10, 64); err == nil {
			return n
		}
	}
	return v
}

var segRe = regexp.MustCompile(`^([^\[]*)((?:\[\d+\])*)$`)

// setValue applies one "a.b[0].c=value" assignment (helm strvals syntax for the common cases:
// dotted keys, list indexes, \-escapes, {a,b} lists).
func setValue(root map[string]interface{}, assignment string, asString bool) error {
	kv := splitUnescaped(assignment, '=')
	if len(kv) < 2 {
		return fmt.Errorf("key %q has no value", assignment)
	}
	key, raw := kv[0], strings.Join(kv[1:], "=")
	var val interface{}
	if strings.HasPrefix(raw, "{") && strings.HasSuffix(raw, "}") && !asString {
		items := []interface{}{}
		inner := raw[1 : len(raw)-1]
		if inner != "" {
			for _, it := range splitUnescaped(inner, ',') {
				items = append(items, typed(unescape(it), false))
			}
		}
		val = items
	} else {
		val = typed(unescape(raw), asString)
	}
	parts := splitUnescaped(key, '.')
	var cur interface{} = root
	for i, p := range parts {
		m := segRe.FindStringSubmatch(p)
		if m == nil {
			return fmt.Errorf("cannot parse key segment %q in %q", p, key)
		}
		name := unescape(m[1])
		var idxs []int
		for _, s := range regexp.MustCompile(`\d+`).FindAllString(m[2], -1) {
			n, _ := strconv.Atoi(s)
			idxs = append(idxs, n)
		}
		last := i == len(parts)-1
		parent, ok := cur.(map[string]interface{})
		if !ok {
			return fmt.Errorf("%q: %s is not a map", key, name)
		}
		if len(idxs) == 0 {
			if last {
				parent[name] = val
				return nil
			}
			next, ok := parent[name].(map[string]interface{})
			if !ok {
				next = map[string]interface{}{}
				parent[name] = next
			}
			cur = next
			continue
		}
		list, _ := parent[name].([]interface{})
		for n, idx := range idxs {
			for len(list) <= idx {
				list = append(list, nil)
			}
			if n == len(idxs)-1 {
				if last {
					list[idx] = val
				} else if _, ok := list[idx].(map[string]interface{}); !ok {
					list[idx] = map[string]interface{}{}
				}
			} else if _, ok := list[idx].([]interface{}); !ok {
				list[idx] = []interface{}{}
			}
			parent[name] = list
			if n == len(idxs)-1 {
				cur = list[idx]
			}
		}
		if last {
			return nil
		}
	}
	return nil
}

// ---- Helm's template functions (pkg/engine/funcs.go) --------------------------------------------

func toYAML(v interface{}) string {
	data, err := yaml.Marshal(v)
	if err != nil {
		return ""
	}
	return strings.TrimSuffix(string(data), "\n")
}

func fromYAML(s string) map[string]interface{} {
	m := map[string]interface{}{}
	if err := yaml.Unmarshal([]byte(s), &m); err != nil {
		m["Error"] = err.Error()
	}
	return m
}

func fromYAMLArray(s string) []interface{} {
	a := []interface{}{}
	if err := yaml.Unmarshal([]byte(s), &a); err != nil {
		a = []interface{}{err.Error()}
	}
	return a
}

func toJSON(v interface{}) string {
	data, err := json.Marshal(v)
	if err != nil {
		return ""
	}
	return string(data)
}

func fromJSON(s string) map[string]interface{} {
	m := map[string]interface{}{}
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		m["Error"] = err.Error()
	}
	return m
}

func fromJSONArray(s string) []interface{} {
	a := []interface{}{}
	if err := json.Unmarshal([]byte(s), &a); err != nil {
		a = []interface{}{err.Error()}
	}
	return a
}

func toTOML(v interface{}) string {
	b := bytes.NewBuffer(nil)
	if err := toml.NewEncoder(b).Encode(v); err != nil {
		return err.Error()
	}
	return b.String()
}

const recursionMaxNums = 1000

type engine struct {
	tmpl          *template.Template
	includedNames map[string]int
}

func (e *engine) funcMap() template.FuncMap {
	f := sprig.TxtFuncMap()
	delete(f, "env")
	delete(f, "expandenv")
	extra := template.FuncMap{
		"toToml":        toTOML,
		"toYaml":        toYAML,
		"fromYaml":      fromYAML,
		"fromYamlArray": fromYAMLArray,
		"toJson":        toJSON,
		"fromJson":      fromJSON,
		"fromJsonArray": fromJSONArray,
		"include": func(name string, data interface{}) (string, error) {
			if e.includedNames[name] > recursionMaxNums {
				return "", fmt.Errorf("rendering template has a nested reference name: %s", name)
			}
			e.includedNames[name]++
			var buf strings.Builder
			err := e.tmpl.ExecuteTemplate(&buf, name, data)
			e.includedNames[name]--
			return buf.String(), err
		},
		"tpl": func(tpl string, vals interface{}) (string, error) {
			t, err := e.tmpl.Clone()
			if err != nil {
				return "", err
			}
			t, err = t.New("tpl").Option("missingkey=zero").Parse(tpl)
			if err != nil {
				return "", fmt.Errorf("cannot parse template %q: %w", tpl, err)
			}
			var buf strings.Builder
			if err := t.Execute(&buf, vals); err != nil {
				return "", fmt.Errorf("error during tpl function execution for %q: %w", tpl, err)
			}
			return strings.ReplaceAll(buf.String(), "<no value>", ""), nil
		},
		"required": func(msg string, val interface{}) (interface{}, error) {
			if val == nil {
				return val, errors.New(msg)
			}
			if s, ok := val.(string); ok && s == "" {
				return val, errors.New(msg)
			}
			return val, nil
		},
		// `helm template` has no cluster: lookup returns an empty map, as Helm does offline.
		"lookup": func(apiversion, kind, namespace, name string) (map[string]interface{}, error) {
			return map[string]interface{}{}, nil
		},
	}
	for k, v := range extra {
		f[k] = v
	}
	return f
}

// ---- install order (pkg/releaseutil/kind_sorter.go) --------------------------------------------

var installOrder = []string{
	"PriorityClass", "Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange",
	"PodSecurityPolicy", "PodDisruptionBudget", "ServiceAccount", "Secret", "SecretList",
	"ConfigMap", "StorageClass", "PersistentVolume", "PersistentVolumeClaim",
	"CustomResourceDefinition", "ClusterRole", "ClusterRoleList", "ClusterRoleBinding",
	"ClusterRoleBindingList", "Role", "RoleList", "RoleBinding", "RoleBindingList", "Service",
	"DaemonSet", "Pod", "ReplicationController", "ReplicaSet", "Deployment",
	"HorizontalPodAutoscaler", "StatefulSet", "Job", "CronJob", "IngressClass", "Ingress",
	"APIService", "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration",
}

func kindRank(kind string) int {
	for i, k := range installOrder {
		if k == kind {
			return i
		}
	}
	return len(installOrder)
}

type manifest struct {
	source  string
	content string
	kind    string
	name    string
}

var docSep = regexp.MustCompile(`(?m)^---[ \t]*$`)

// ---- main ---------------------------------------------------------------------------------------

type options struct {
	release, chart, namespace, kubeVersion, showOnly string
	valueFiles, sets, setStrings, apiVersions        []string
	notes, isUpgrade                                 bool
}

func parseArgs(args []string) (options, error) {
	o := options{namespace: "default", kubeVersion: "v1.31.0"}
	var pos []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		val := func() (string, error) {
			if k, v, ok := strings.Cut(a, "="); ok && strings.HasPrefix(k, "-") {
				_ = k
				return v, nil
			}
			if i+1 >= len(args) {
				return "", fmt.Errorf("flag %s needs a value", a)
			}
			i++
			return args[i], nil
		}
		name, _, _ := strings.Cut(a, "=")
		var err error
		var v string
		switch name {
		case "-n", "--namespace":
			v, err = val()
			o.namespace = v
		case "-f", "--values":
			v, err = val()
			o.valueFiles = append(o.valueFiles, v)
		case "--set":
			v, err = val()
			o.sets = append(o.sets, v)
		case "--set-string":
			v, err = val()
			o.setStrings = append(o.setStrings, v)
		case "--kube-version":
			v, err = val()
			o.kubeVersion = v
		case "-a", "--api-versions":
			v, err = val()
			o.apiVersions = append(o.apiVersions, v)
		case "-s", "--show-only":
			v, err = val()
			o.showOnly = v
		case "--notes":
			o.notes = true
		case "--is-upgrade":
			o.isUpgrade = true
		default:
			if strings.HasPrefix(a, "-") {
				return o, fmt.Errorf("unknown flag %s", a)
			}
			pos = append(pos, a)
		}
		if err != nil {
			return o, err
		}
	}
	if len(pos) > 0 && pos[0] == "template" {
		pos = pos[1:]
	}
	if len(pos) != 2 {
		return o, errors.New("usage: render template RELEASE CHART_DIR [-n NS] [-f FILE]... [--set K=V]... [--set-string K=V]... [--kube-version V] [--api-versions G/V]... [--show-only PATH] [--notes]")
	}
	o.release, o.chart = pos[0], pos[1]
	return o, nil
}

func run(o options) error {
	chartDir := o.chart
	rawMeta, err := os.ReadFile(filepath.Join(chartDir, "Chart.yaml"))
	if err != nil {
		return fmt.Errorf("Chart.yaml file is missing: %w", err)
	}
	var meta Metadata
	if err := yaml.UnmarshalStrict(rawMeta, &meta); err != nil {
		return fmt.Errorf("Chart.yaml: %w", err)
	}
	if meta.APIVersion != "v2" {
		return fmt.Errorf("Chart.yaml: apiVersion must be v2 for Helm 3, got %q", meta.APIVersion)
	}
	if meta.Name == "" || meta.Version == "" {
		return errors.New("Chart.yaml: name and version are required")
	}

	rules := loadIgnore(chartDir)
	files := Files{}
	templates := map[string]string{}
	var schema []byte
	defaults := map[string]interface{}{}
	err = walk(chartDir, "", rules, func(rel string, data []byte) error {
		switch {
		case rel == "Chart.yaml", rel == ".helmignore", rel == "Chart.lock":
		case rel == "values.yaml":
			if err := yaml.Unmarshal(data, &defaults); err != nil {
				return fmt.Errorf("values.yaml: %w", err)
			}
		case rel == "values.schema.json":
			schema = data
		case strings.HasPrefix(rel, "templates/"):
			templates[meta.Name+"/"+rel] = string(data)
		case strings.HasPrefix(rel, "charts/"):
			return fmt.Errorf("%s: subcharts are not supported by this renderer", rel)
		default:
			files[rel] = data
		}
		return nil
	})
	if err != nil {
		return err
	}
	cleanNulls(defaults)

	user := map[string]interface{}{}
	for _, f := range o.valueFiles {
		data, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		m := map[string]interface{}{}
		if err := yaml.Unmarshal(data, &m); err != nil {
			return fmt.Errorf("%s: %w", f, err)
		}
		user = coalesce(user, m)
	}
	for _, s := range o.sets {
		for _, a := range splitAssignments(s) {
			if err := setValue(user, a, false); err != nil {
				return fmt.Errorf("failed parsing --set data: %w", err)
			}
		}
	}
	for _, s := range o.setStrings {
		for _, a := range splitAssignments(s) {
			if err := setValue(user, a, true); err != nil {
				return fmt.Errorf("failed parsing --set-string data: %w", err)
			}
		}
	}
	values := coalesce(defaults, user)

	if schema != nil {
		doc, _ := json.Marshal(values)
		res, err := gojsonschema.Validate(gojsonschema.NewBytesLoader(schema), gojsonschema.NewBytesLoader(doc))
		if err != nil {
			return fmt.Errorf("values.schema.json: %w", err)
		}
		if !res.Valid() {
			var b strings.Builder
			b.WriteString("values don't meet the specifications of the schema(s) in the following chart(s):\n" + meta.Name + ":\n")
			for _, e := range res.Errors() {
				b.WriteString("- " + e.String() + "\n")
			}
			return errors.New(b.String())
		}
	}

	kv := strings.TrimPrefix(o.kubeVersion, "v")
	parts := strings.SplitN(kv, ".", 3)
	if len(parts) < 2 {
		return fmt.Errorf("--kube-version %q: expected vMAJOR.MINOR[.PATCH]", o.kubeVersion)
	}
	if meta.KubeVersion != "" {
		c, err := semver.NewConstraint(meta.KubeVersion)
		if err != nil {
			return fmt.Errorf("Chart.yaml: kubeVersion %q: %w", meta.KubeVersion, err)
		}
		v, err := semver.NewVersion(kv)
		if err != nil {
			return fmt.Errorf("--kube-version %q: %w", o.kubeVersion, err)
		}
		if !c.Check(v) {
			return fmt.Errorf("chart requires kubeVersion: %s which is incompatible with Kubernetes v%s", meta.KubeVersion, kv)
		}
	}
	apis := VersionSet{"v1", "apps/v1", "batch/v1", "policy/v1", "rbac.authorization.k8s.io/v1",
		"apiextensions.k8s.io/v1", "coordination.k8s.io/v1", "networking.k8s.io/v1",
		"admissionregistration.k8s.io/v1", "storage.k8s.io/v1", "scheduling.k8s.io/v1",
		"discovery.k8s.io/v1", "autoscaling/v2", "authentication.k8s.io/v1"}
	apis = append(apis, o.apiVersions...)
	caps := Capabilities{
		KubeVersion: KubeVersion{Version: "v" + kv, Major: parts[0], Minor: parts[1], GitVersion: "v" + kv},
		APIVersions: apis,
		HelmVersion: HelmVersion{Version: "v3.17.0", GoVersion: "go1.19"},
	}

	e := &engine{includedNames: map[string]int{}}
	e.tmpl = template.New("gotpl").Option("missingkey=zero")
	e.tmpl.Funcs(e.funcMap())
	names := make([]string, 0, len(templates))
	for n := range templates {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if _, err := e.tmpl.New(n).Parse(templates[n]); err != nil {
			return fmt.Errorf("parse error in %q: %w", n, err)
		}
	}
	release := Release{Name: o.release, Namespace: o.namespace, IsInstall: !o.isUpgrade,
		IsUpgrade: o.isUpgrade, Revision: 1, Service: "Helm"}

	var manifests []manifest
	var notes string
	for _, n := range names {
		if strings.HasPrefix(path.Base(n), "_") {
			continue
		}
		top := map[string]interface{}{
			"Values":       values,
			"Release":      release,
			"Chart":        meta,
			"Capabilities": caps,
			"Files":        files,
			"Template":     TemplateInfo{Name: n, BasePath: meta.Name + "/templates"},
		}
		var buf strings.Builder
		if err := e.tmpl.ExecuteTemplate(&buf, n, top); err != nil {
			return err
		}
		out := strings.ReplaceAll(buf.String(), "<no value>", "")
		if strings.HasSuffix(n, "NOTES.txt") {
			notes = out
			continue
		}
		for _, doc := range docSep.Split(out, -1) {
			if strings.TrimSpace(doc) == "" {
				continue
			}
			var head struct {
				Kind     string `json:"kind"`
				Metadata struct {
					Name string `json:"name"`
				} `json:"metadata"`
			}
			if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
				return fmt.Errorf("YAML parse error on %s: %w", n, err)
			}
			manifests = append(manifests, manifest{source: n, content: strings.Trim(doc, "\n"), kind: head.Kind, name: head.Metadata.Name})
		}
	}
	sort.SliceStable(manifests, func(i, j int) bool {
		ri, rj := kindRank(manifests[i].kind), kindRank(manifests[j].kind)
		if ri != rj {
			return ri < rj
		}
		return manifests[i].name < manifests[j].name
	})
	var w strings.Builder
	found := false
	for _, m := range manifests {
		if o.showOnly != "" && m.source != meta.Name+"/"+o.showOnly {
			continue
		}
		found = true
		fmt.Fprintf(&w, "---\n# Source: %s\n%s\n", m.source, m.content)
	}
	if o.showOnly != "" && !found {
		return fmt.Errorf("could not find template %s in chart", o.showOnly)
	}
	os.Stdout.WriteString(w.String())
	if o.notes {
		os.Stderr.WriteString(notes)
	}
	return nil
}

func main() {
	o, err := parseArgs(os.Args[1:])
	if err == nil {
		err = run(o)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "Error:", err)
		os.Exit(1)
	}
}
