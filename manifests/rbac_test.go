package manifests

// RBAC: what each service account may do, and no token mounted for an
// account bound to nothing.

import (
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
)

type grant struct {
	rule      rbacv1.PolicyRule
	namespace string // "" for a cluster-wide grant
	from      string
}

// grantsFor collects the rules bound to a service account.
func grantsFor(objs []*object, ns, sa string) []grant {
	subjectIs := func(subs []rbacv1.Subject) bool {
		for _, s := range subs {
			if s.Kind == rbacv1.ServiceAccountKind && s.Name == sa && s.Namespace == ns {
				return true
			}
		}
		return false
	}
	var gs []grant
	each(objs, func(o *object, b *rbacv1.ClusterRoleBinding) {
		if !subjectIs(b.Subjects) || b.RoleRef.Kind != "ClusterRole" {
			return
		}
		if r := lookup[rbacv1.ClusterRole](objs, "", b.RoleRef.Name); r != nil {
			for _, rule := range r.Rules {
				gs = append(gs, grant{rule, "", o.String()})
			}
		}
	})
	each(objs, func(o *object, b *rbacv1.RoleBinding) {
		if !subjectIs(b.Subjects) {
			return
		}
		var rules []rbacv1.PolicyRule
		switch b.RoleRef.Kind {
		case "Role":
			if r := lookup[rbacv1.Role](objs, o.ns(), b.RoleRef.Name); r != nil {
				rules = r.Rules
			}
		case "ClusterRole":
			if r := lookup[rbacv1.ClusterRole](objs, "", b.RoleRef.Name); r != nil {
				rules = r.Rules
			}
		}
		for _, rule := range rules {
			gs = append(gs, grant{rule, o.ns(), o.String()})
		}
	})
	return gs
}

// bound says whether a RoleBinding or ClusterRoleBinding names the account.
func bound(objs []*object, ns, sa string) bool {
	is := func(subs []rbacv1.Subject) bool {
		return slices.ContainsFunc(subs, func(s rbacv1.Subject) bool {
			return s.Kind == rbacv1.ServiceAccountKind && s.Name == sa && s.Namespace == ns
		})
	}
	found := false
	each(objs, func(_ *object, b *rbacv1.ClusterRoleBinding) { found = found || is(b.Subjects) })
	each(objs, func(_ *object, b *rbacv1.RoleBinding) { found = found || is(b.Subjects) })
	return found
}

func has(list []string, v string) bool { return slices.Contains(list, v) || slices.Contains(list, "*") }

// allowed says whether the grants allow verb on group/resource in namespace
// ns ("" meaning cluster-wide: all namespaces, or a cluster-scoped kind).
func allowed(gs []grant, ns, group, resource, verb string) bool {
	for _, g := range gs {
		r := g.rule
		if len(r.ResourceNames) > 0 || (g.namespace != "" && g.namespace != ns) {
			continue
		}
		if has(r.APIGroups, group) && has(r.Resources, resource) && has(r.Verbs, verb) {
			return true
		}
	}
	return false
}

type permission struct {
	group, resource string
	verbs           []string
	namespaced      bool // in the workload's own namespace only
}

// What the controller's sidecars need (their upstream RBAC), and
// csi-ceph's node plugin.
var controllerPermissions = []permission{
	// external-provisioner
	{"", "persistentvolumes", []string{"create", "delete", "get", "list", "watch", "patch"}, false},
	{"", "persistentvolumeclaims", []string{"get", "list", "watch", "update"}, false},
	{"storage.k8s.io", "storageclasses", []string{"get", "list", "watch"}, false},
	{"", "events", []string{"list", "watch", "create", "update", "patch"}, false},
	{"snapshot.storage.k8s.io", "volumesnapshots", []string{"get", "list"}, false},
	{"snapshot.storage.k8s.io", "volumesnapshotcontents", []string{"get", "list"}, false},
	{"storage.k8s.io", "csinodes", []string{"get", "list", "watch"}, false},
	{"", "nodes", []string{"get", "list", "watch"}, false},
	{"storage.k8s.io", "volumeattachments", []string{"get", "list", "watch"}, false},
	{"", "secrets", []string{"get"}, false},
	// external-attacher
	{"", "persistentvolumes", []string{"get", "list", "watch", "patch"}, false},
	{"storage.k8s.io", "volumeattachments", []string{"get", "list", "watch", "patch"}, false},
	{"storage.k8s.io", "volumeattachments/status", []string{"patch"}, false},
	// external-snapshotter
	{"snapshot.storage.k8s.io", "volumesnapshotclasses", []string{"get", "list", "watch"}, false},
	{"snapshot.storage.k8s.io", "volumesnapshotcontents", []string{"create", "get", "list", "watch", "update", "delete", "patch"}, false},
	{"snapshot.storage.k8s.io", "volumesnapshotcontents/status", []string{"update", "patch"}, false},
	// external-resizer
	{"", "persistentvolumeclaims", []string{"get", "list", "watch"}, false},
	{"", "persistentvolumeclaims/status", []string{"patch"}, false},
	{"", "pods", []string{"list", "watch"}, false},
	// leader election
	{"coordination.k8s.io", "leases", []string{"get", "watch", "list", "delete", "update", "create"}, true},
}

var nodePermissions = []permission{
	{"", "nodes", []string{"get"}, false},
}

func TestRBAC(t *testing.T) {
	objs := load(t)
	builtinClusterRoles := map[string]bool{"cluster-admin": true, "admin": true, "edit": true, "view": true}
	checkRules := func(o *object, rules []rbacv1.PolicyRule) {
		if len(rules) == 0 {
			t.Errorf("%s: no rules", o)
		}
		for i, r := range rules {
			if len(r.Verbs) == 0 || (len(r.Resources) == 0 && len(r.NonResourceURLs) == 0) {
				t.Errorf("%s: rule %d grants nothing", o, i)
			}
			if slices.Contains(r.Verbs, "*") || slices.Contains(r.Resources, "*") || slices.Contains(r.APIGroups, "*") {
				t.Errorf("%s: rule %d uses a wildcard: list what is needed", o, i)
			}
		}
	}
	each(objs, func(o *object, r *rbacv1.ClusterRole) { checkRules(o, r.Rules) })
	each(objs, func(o *object, r *rbacv1.Role) { checkRules(o, r.Rules) })
	checkBinding := func(o *object, subs []rbacv1.Subject, ref rbacv1.RoleRef) {
		if ref.APIGroup != rbacv1.GroupName {
			t.Errorf("%s: roleRef.apiGroup %q", o, ref.APIGroup)
		}
		switch ref.Kind {
		case "ClusterRole":
			if lookup[rbacv1.ClusterRole](objs, "", ref.Name) == nil && !builtinClusterRoles[ref.Name] && !strings.HasPrefix(ref.Name, "system:") {
				t.Errorf("%s: ClusterRole %q is not in the manifests", o, ref.Name)
			}
		case "Role":
			if o.kind != "RoleBinding" || lookup[rbacv1.Role](objs, o.ns(), ref.Name) == nil {
				t.Errorf("%s: Role %q is not in the manifests (in namespace %q)", o, ref.Name, o.ns())
			}
		default:
			t.Errorf("%s: roleRef.kind %q", o, ref.Kind)
		}
		if len(subs) == 0 {
			t.Errorf("%s: no subjects", o)
		}
		for _, s := range subs {
			if s.Kind == rbacv1.ServiceAccountKind {
				if s.Namespace == "" || lookup[corev1.ServiceAccount](objs, s.Namespace, s.Name) == nil {
					t.Errorf("%s: subject ServiceAccount %s/%s is not in the manifests", o, s.Namespace, s.Name)
				}
			}
		}
	}
	each(objs, func(o *object, b *rbacv1.ClusterRoleBinding) { checkBinding(o, b.Subjects, b.RoleRef) })
	each(objs, func(o *object, b *rbacv1.RoleBinding) { checkBinding(o, b.Subjects, b.RoleRef) })

	// A workload whose account is bound to no role has no use for its
	// token: it must not be mounted.
	for _, w := range workloads(objs) {
		s := w.spec()
		sa := lookup[corev1.ServiceAccount](objs, w.o.ns(), s.ServiceAccountName)
		if sa == nil || bound(objs, w.o.ns(), s.ServiceAccountName) {
			continue
		}
		automount := true
		if sa.AutomountServiceAccountToken != nil {
			automount = *sa.AutomountServiceAccountToken
		}
		if s.AutomountServiceAccountToken != nil {
			automount = *s.AutomountServiceAccountToken
		}
		if automount {
			t.Errorf("%s: ServiceAccount %s is bound to no role, yet its token is mounted: set automountServiceAccountToken false", w.o, s.ServiceAccountName)
		}
	}

	// csi-ceph: the controller's account has what its sidecars need (leases
	// only in its namespace); the node's account has only get on nodes.
	ctrl := lookup[appsv1.Deployment](objs, cephNamespace, cephController)
	node := lookup[appsv1.DaemonSet](objs, cephNamespace, cephNode)
	if ctrl == nil || node == nil {
		t.Fatalf("Deployment %s/%s or DaemonSet %s/%s missing", cephNamespace, cephController, cephNamespace, cephNode)
	}
	check := func(what, sa string, perms []permission) []grant {
		gs := grantsFor(objs, cephNamespace, sa)
		for _, p := range perms {
			ns := ""
			if p.namespaced {
				ns = cephNamespace
			}
			for _, v := range p.verbs {
				if !allowed(gs, ns, p.group, p.resource, v) {
					t.Errorf("%s (ServiceAccount %s) may not %s %s in group %q (namespace %q)", what, sa, v, p.resource, p.group, ns)
				}
			}
		}
		return gs
	}
	cg := check("csi-ceph controller", ctrl.Spec.Template.Spec.ServiceAccountName, controllerPermissions)
	if allowed(cg, "", "coordination.k8s.io", "leases", "create") {
		t.Errorf("csi-ceph controller may create leases in every namespace: grant them with a Role in %s", cephNamespace)
	}
	ng := check("csi-ceph node", node.Spec.Template.Spec.ServiceAccountName, nodePermissions)
	for _, g := range ng {
		for _, grp := range g.rule.APIGroups {
			for _, res := range g.rule.Resources {
				for _, v := range g.rule.Verbs {
					if grp != "" || res != "nodes" || v != "get" {
						t.Errorf("csi-ceph node may %s %s in group %q (%s): it needs only get on nodes", v, res, grp, g.from)
					}
				}
			}
		}
	}
}
