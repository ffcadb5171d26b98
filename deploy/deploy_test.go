// Package deploy holds the Kubernetes manifests, dashboard and alert rules;
// this test renders and checks them without a cluster.
package deploy

import (
	"bufio"
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"

	"github.com/replproxy/replproxy/internal/config"
)

type rendered struct {
	sts      []*appsv1.StatefulSet
	svcs     []*corev1.Service
	secrets  []*corev1.Secret
	netpols  []*networkingv1.NetworkPolicy
	pdbs     []*policyv1.PodDisruptionBudget
	crs      []map[string]any
	overlays string
}

func render(t *testing.T, overlay string) *rendered {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	rm, err := k.Run(filesys.MakeFsOnDisk(), filepath.Join("kubernetes", "overlays", overlay))
	if err != nil {
		t.Fatalf("kustomize %s: %v", overlay, err)
	}
	out, err := rm.AsYaml()
	if err != nil {
		t.Fatal(err)
	}
	r := &rendered{overlays: overlay}
	rd := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(out)))
	for {
		doc, err := rd.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		var meta struct{ Kind string }
		if err := yaml.Unmarshal(doc, &meta); err != nil {
			t.Fatal(err)
		}
		strict := func(v any) {
			if err := yaml.UnmarshalStrict(doc, v); err != nil {
				t.Fatalf("%s: %s does not decode strictly: %v", overlay, meta.Kind, err)
			}
		}
		switch meta.Kind {
		case "StatefulSet":
			v := &appsv1.StatefulSet{}
			strict(v)
			r.sts = append(r.sts, v)
		case "Service":
			v := &corev1.Service{}
			strict(v)
			r.svcs = append(r.svcs, v)
		case "Secret":
			v := &corev1.Secret{}
			strict(v)
			r.secrets = append(r.secrets, v)
		case "NetworkPolicy":
			v := &networkingv1.NetworkPolicy{}
			strict(v)
			r.netpols = append(r.netpols, v)
		case "PodDisruptionBudget":
			v := &policyv1.PodDisruptionBudget{}
			strict(v)
			r.pdbs = append(r.pdbs, v)
		case "PodMonitor", "PrometheusRule", "Certificate":
			var v map[string]any
			strict(&v)
			r.crs = append(r.crs, v)
		default:
			t.Fatalf("%s: unexpected kind %q", overlay, meta.Kind)
		}
	}
	return r
}

func matches(sel, labels map[string]string) bool {
	if len(sel) == 0 {
		return false
	}
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return true
}

func allContainers(spec *corev1.PodSpec) []corev1.Container {
	return append(append([]corev1.Container{}, spec.InitContainers...), spec.Containers...)
}

func portNames(spec *corev1.PodSpec) map[string]bool {
	out := map[string]bool{}
	for _, c := range allContainers(spec) {
		for _, p := range c.Ports {
			out[p.Name] = true
		}
	}
	return out
}

var servedPaths = map[string]bool{"/livez": true, "/readyz": true, "/healthz": true, "/metrics": true}

func checkProbe(t *testing.T, where string, p *corev1.Probe, ports map[string]bool) {
	if p == nil {
		return
	}
	var port intstr.IntOrString
	switch {
	case p.HTTPGet != nil:
		if !servedPaths[p.HTTPGet.Path] {
			t.Errorf("%s: probe path %q is not served by replproxy", where, p.HTTPGet.Path)
		}
		port = p.HTTPGet.Port
	case p.TCPSocket != nil:
		port = p.TCPSocket.Port
	default:
		return
	}
	if port.Type == intstr.String && !ports[port.StrVal] {
		t.Errorf("%s: probe names port %q that no container declares", where, port.StrVal)
	}
}

func TestManifests(t *testing.T) {
	for _, overlay := range []string{"sidecar", "tier", "sidecar-tls", "tier-tls"} {
		t.Run(overlay, func(t *testing.T) {
			r := render(t, overlay)
			pods := map[string]*corev1.PodTemplateSpec{}
			for _, s := range r.sts {
				where := overlay + "/" + s.Name
				pods[s.Name] = &s.Spec.Template
				if !matches(s.Spec.Selector.MatchLabels, s.Spec.Template.Labels) {
					t.Errorf("%s: selector %v does not match template labels %v", where, s.Spec.Selector.MatchLabels, s.Spec.Template.Labels)
				}
				spec := &s.Spec.Template.Spec
				if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
					t.Errorf("%s: automountServiceAccountToken must be false", where)
				}
				if sc := spec.SecurityContext; sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot ||
					sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
					t.Errorf("%s: pod securityContext is not restricted", where)
				}
				volumes := map[string]bool{}
				for _, v := range spec.Volumes {
					volumes[v.Name] = true
				}
				for _, v := range s.Spec.VolumeClaimTemplates {
					volumes[v.Name] = true
				}
				ports := portNames(spec)
				for _, c := range allContainers(spec) {
					cw := where + "/" + c.Name
					for _, m := range c.VolumeMounts {
						if !volumes[m.Name] {
							t.Errorf("%s: volumeMount %q has no volume", cw, m.Name)
						}
					}
					sc := c.SecurityContext
					if sc == nil || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
						sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
						sc.Capabilities == nil || len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" {
						t.Errorf("%s: container securityContext is not restricted", cw)
					}
					if c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
						t.Errorf("%s: memory request and limit required", cw)
					}
					checkProbe(t, cw+" liveness", c.LivenessProbe, ports)
					checkProbe(t, cw+" readiness", c.ReadinessProbe, ports)
					if c.Name == "replproxy" {
						checkReplproxy(t, cw, c, overlay)
					}
				}
			}
			for _, svc := range r.svcs {
				var selected []*corev1.PodTemplateSpec
				for _, p := range pods {
					if matches(svc.Spec.Selector, p.Labels) {
						selected = append(selected, p)
					}
				}
				if len(selected) == 0 {
					t.Errorf("%s: Service %s selects no pod", overlay, svc.Name)
				}
				for _, sp := range svc.Spec.Ports {
					for _, p := range selected {
						if sp.TargetPort.Type == intstr.String && !portNames(&p.Spec)[sp.TargetPort.StrVal] {
							t.Errorf("%s: Service %s targets port %q missing from a selected pod", overlay, svc.Name, sp.TargetPort.StrVal)
						}
					}
				}
			}
			for _, np := range r.netpols {
				var any bool
				for _, p := range pods {
					if matches(np.Spec.PodSelector.MatchLabels, p.Labels) {
						any = true
						for _, rule := range np.Spec.Ingress {
							for _, port := range rule.Ports {
								if port.Port != nil && port.Port.Type == intstr.String && !portNames(&p.Spec)[port.Port.StrVal] {
									t.Errorf("%s: NetworkPolicy names port %q missing from a selected pod", overlay, port.Port.StrVal)
								}
							}
						}
					}
				}
				if !any {
					t.Errorf("%s: NetworkPolicy %s selects no pod", overlay, np.Name)
				}
			}
			for _, pdb := range r.pdbs {
				found := false
				for _, p := range pods {
					found = found || matches(pdb.Spec.Selector.MatchLabels, p.Labels)
				}
				if !found {
					t.Errorf("%s: PDB %s selects no pod", overlay, pdb.Name)
				}
			}
			kinds := map[string]bool{}
			for _, cr := range r.crs {
				kinds[cr["kind"].(string)] = true
			}
			if !kinds["PodMonitor"] || !kinds["PrometheusRule"] || len(r.secrets) != 1 {
				t.Errorf("%s: missing PodMonitor, PrometheusRule or Secret", overlay)
			}
			switch strings.TrimSuffix(overlay, "-tls") {
			case "sidecar":
				checkSidecar(t, r)
			case "tier":
				checkTier(t, r)
			}
			if strings.HasSuffix(overlay, "-tls") {
				checkTLS(t, r)
			}
		})
	}
}

// checkReplproxy: the container's args and env parse with the binary's own
// parser, and the password comes from a file.
func checkReplproxy(t *testing.T, where string, c corev1.Container, overlay string) {
	env := map[string]string{}
	for _, e := range c.Env {
		v := e.Value
		if e.ValueFrom != nil {
			v = "10.0.0.1" // downward API values are filled in by the kubelet
		}
		env[e.Name] = v
	}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	if err := config.CheckArgs(c.Args, lookup); err != nil {
		t.Errorf("%s: args do not parse: %v", where, err)
	}
	joined := strings.Join(c.Args, " ")
	if !strings.Contains(joined, "--upstream-password-file=") || !strings.Contains(joined, "--requirepass-file=") {
		t.Errorf("%s: passwords must come from files", where)
	}
	if env["GOMEMLIMIT"] == "" {
		t.Errorf("%s: GOMEMLIMIT is not set from the memory limit", where)
	}
	want := "--readiness=synced"
	if strings.HasPrefix(overlay, "sidecar") {
		want = "--readiness=process"
	}
	if !strings.Contains(joined, want) {
		t.Errorf("%s: want %s", where, want)
	}
}

func checkSidecar(t *testing.T, r *rendered) {
	for _, s := range r.sts {
		for _, c := range s.Spec.Template.Spec.InitContainers {
			if c.Name != "replproxy" {
				continue
			}
			if c.RestartPolicy == nil || *c.RestartPolicy != corev1.ContainerRestartPolicyAlways {
				t.Error("sidecar: replproxy must be a native sidecar (restartPolicy Always)")
			}
			if !strings.Contains(strings.Join(c.Args, " "), "--upstream=127.0.0.1:6379") {
				t.Error("sidecar: replproxy must attach to localhost")
			}
			for _, v := range s.Spec.Template.Spec.Volumes {
				if v.Name == "replproxy-data" && (v.EmptyDir == nil || v.EmptyDir.SizeLimit == nil) {
					t.Error("sidecar: data dir must be an emptyDir with a sizeLimit")
				}
			}
			return
		}
	}
	t.Error("sidecar: no replproxy init container")
}

func checkTier(t *testing.T, r *rendered) {
	var proxySts *appsv1.StatefulSet
	for _, s := range r.sts {
		if s.Name == "replproxy" {
			proxySts = s
		}
	}
	if proxySts == nil || len(proxySts.Spec.VolumeClaimTemplates) == 0 {
		t.Fatal("tier: replproxy StatefulSet with a PVC template missing")
	}
	if a := proxySts.Spec.Template.Spec.Affinity; a == nil || a.PodAntiAffinity == nil ||
		len(a.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution) == 0 {
		t.Error("tier: soft pod anti-affinity missing")
	}
	for _, svc := range r.svcs {
		if svc.Name == "replproxy" && svc.Spec.SessionAffinity != corev1.ServiceAffinityClientIP {
			t.Error("tier: replproxy Service needs sessionAffinity ClientIP")
		}
	}
	if len(r.pdbs) != 1 {
		t.Error("tier: PDB missing")
	}
}

// checkTLS: replicas reach replproxy over TLS only, with client
// certificates; every certificate path lies in a mounted Secret volume
// without subPath (a subPath mount never sees a renewal); the tier's
// upstream hop is TLS with the master serving TLS only; a Certificate
// writes the Secret.
func checkTLS(t *testing.T, r *rendered) {
	var cert bool
	for _, cr := range r.crs {
		if cr["kind"] == "Certificate" {
			spec, _ := cr["spec"].(map[string]any)
			cert = spec["secretName"] == "redis-tls"
		}
	}
	if !cert {
		t.Errorf("%s: no Certificate writing the redis-tls Secret", r.overlays)
	}
	for _, s := range r.sts {
		spec := &s.Spec.Template.Spec
		secretVols := map[string]bool{}
		for _, v := range spec.Volumes {
			if v.Secret != nil && v.Secret.SecretName == "redis-tls" {
				secretVols[v.Name] = true
			}
		}
		for _, c := range allContainers(spec) {
			where := r.overlays + "/" + s.Name + "/" + c.Name
			mounts := map[string]bool{}
			for _, m := range c.VolumeMounts {
				if secretVols[m.Name] {
					if m.SubPath != "" {
						t.Errorf("%s: the TLS Secret is mounted with subPath: renewals never arrive", where)
					}
					mounts[m.MountPath] = true
				}
			}
			joined := strings.Join(append(append([]string{}, c.Command...), c.Args...), " ")
			for _, f := range strings.Fields(strings.NewReplacer("=", " ").Replace(joined)) {
				if strings.HasSuffix(f, ".crt") || strings.HasSuffix(f, ".key") {
					if !mounts[filepath.Dir(f)] {
						t.Errorf("%s: %s is not in a mounted TLS Secret", where, f)
					}
				}
			}
			switch {
			case c.Name == "replproxy":
				for _, want := range []string{"--listen= ", "--tls-listen=0.0.0.0:6380", "--tls-auth-clients=yes", "--tls-ca-cert-file="} {
					if !strings.Contains(joined+" ", want) {
						t.Errorf("%s: want %s", where, want)
					}
				}
				if s.Name == "replproxy" && !strings.Contains(joined, "--upstream-tls ") {
					t.Errorf("%s: the tier's upstream hop must be TLS", where)
				}
			case s.Name == "redis-replica":
				for _, want := range []string{"--port 0", "--tls-replication yes", "--replicaof replproxy 6380"} {
					if !strings.Contains(joined, want) {
						t.Errorf("%s: want %s", where, want)
					}
				}
			case s.Name == "redis-master" && r.overlays == "tier-tls":
				if !strings.Contains(joined, "--port 0 --tls-port 6379") || !strings.Contains(joined, "--tls-auth-clients yes") {
					t.Errorf("%s: the master must serve TLS only, with client certificates", where)
				}
			}
		}
	}
}

// TestPrometheusRuleMatchesAlertsFile keeps the two copies of the rules equal.
func TestPrometheusRuleMatchesAlertsFile(t *testing.T) {
	var file, cr map[string]any
	b, err := os.ReadFile(filepath.Join("prometheus", "alerts.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, &file); err != nil {
		t.Fatal(err)
	}
	b, err = os.ReadFile(filepath.Join("kubernetes", "base", "prometheusrule.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, &cr); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(file["groups"], cr["spec"].(map[string]any)["groups"]) {
		t.Fatal("PrometheusRule differs from prometheus/alerts.yaml; regenerate it")
	}
}

// TestAlertRules runs the rule unit tests (prometheus/alerts_test.yaml)
// through promtool: the alerts fire on the series the proxy exports in the
// scenarios they are written for, and stay quiet otherwise.
func TestAlertRules(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("promtool is missing (make deps installs it)")
		}
		t.Skip("promtool not installed; make deps installs it")
	}
	cmd := exec.Command(promtool, "test", "rules", "alerts_test.yaml")
	cmd.Dir = "prometheus"
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("promtool test rules: %v\n%s", err, out)
	}
}
