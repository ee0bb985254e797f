package kube

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	jsonpatch "github.com/evanphx/json-patch/v5"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
)

// ExistingPolicy says what a restore does with an object that already exists.
type ExistingPolicy string

const (
	// ExistingSkip (the default) leaves an existing object as it is.
	ExistingSkip ExistingPolicy = "skip"
	// ExistingUpdate server-side applies the captured object over it
	// (field manager tidemark, conflicts forced). Fields the capture does
	// not set stay as they are; immutable fields that differ fail that
	// object.
	ExistingUpdate ExistingPolicy = "update"
)

// ErrRestoreIncomplete: some objects of a manifest restore failed; the
// report says which and why.
var ErrRestoreIncomplete = errors.New("manifest restore incomplete")

// RestoreOptions shape a manifest restore.
type RestoreOptions struct {
	// NamespaceMapping maps captured namespaces to the namespaces to
	// restore into (old → new); unmapped namespaces are kept. It also
	// rewrites RoleBinding subjects and the Namespace object itself.
	NamespaceMapping map[string]string `json:"namespaceMapping,omitempty"`
	// Modifiers patch matching objects before they are applied, in order.
	Modifiers []ResourceModifier `json:"resourceModifiers,omitempty"`
	// ExistingResourcePolicy is skip (default) or update.
	ExistingResourcePolicy ExistingPolicy `json:"existingResourcePolicy,omitempty"`
}

// ResourceModifier changes the objects Match selects with a JSON patch
// (RFC 6902) or a JSON merge patch (RFC 7386), exactly one of them:
//
//	resourceModifiers:
//	- match: {kind: PersistentVolumeClaim, name: "data-.*"}
//	  jsonPatch: [{op: replace, path: /spec/storageClassName, value: premium}]
//	- match: {group: apps, kind: StatefulSet, labelSelector: "app=db"}
//	  mergePatch: {spec: {replicas: 1}}
type ResourceModifier struct {
	Match      ResourceMatch   `json:"match"`
	JSONPatch  json.RawMessage `json:"jsonPatch,omitempty"`
	MergePatch json.RawMessage `json:"mergePatch,omitempty"`
}

// ResourceMatch selects objects; every field set must match.
type ResourceMatch struct {
	// Group is the API group; "core" is the core group (Pods, PVCs). Empty matches any.
	Group string `json:"group,omitempty"`
	// Kind matches the kind, ignoring case. Empty matches any.
	Kind string `json:"kind,omitempty"`
	// Name is a regular expression the whole name must match.
	Name string `json:"name,omitempty"`
	// Namespace is a regular expression the whole captured (not mapped) namespace must match.
	Namespace string `json:"namespace,omitempty"`
	// LabelSelector is a label selector ("app=db,tier!=cache").
	LabelSelector string `json:"labelSelector,omitempty"`
}

// RestoreAction is what a restore did with one object.
type RestoreAction string

const (
	RestoreCreated RestoreAction = "created"
	RestoreUpdated RestoreAction = "updated"
	RestoreSkipped RestoreAction = "skipped"
	RestoreFailed  RestoreAction = "failed"
)

// ObjectResult is the outcome for one object, under its restored name.
type ObjectResult struct {
	APIVersion string        `json:"apiVersion"`
	Kind       string        `json:"kind"`
	Namespace  string        `json:"namespace,omitempty"`
	Name       string        `json:"name"`
	Action     RestoreAction `json:"action"`
	Reason     string        `json:"reason,omitempty"`
}

func (r ObjectResult) String() string {
	s := fmt.Sprintf("%s %s: %s", r.Kind, objectPath(r.Namespace, r.Name), r.Action)
	if r.Reason != "" {
		s += " (" + r.Reason + ")"
	}
	return s
}

// RestoreReport lists every object of a restore, in the order applied.
type RestoreReport struct {
	Objects []ObjectResult `json:"objects"`
}

// Count returns how many objects ended with a.
func (r *RestoreReport) Count(a RestoreAction) int {
	n := 0
	for _, o := range r.Objects {
		if o.Action == a {
			n++
		}
	}
	return n
}

// Find returns the result for kind and name, or nil.
func (r *RestoreReport) Find(kind, name string) *ObjectResult {
	for i := range r.Objects {
		if r.Objects[i].Kind == kind && r.Objects[i].Name == name {
			return &r.Objects[i]
		}
	}
	return nil
}

// Err is nil when no object failed, else ErrRestoreIncomplete naming each failure.
func (r *RestoreReport) Err() error {
	var failed []string
	for _, o := range r.Objects {
		if o.Action == RestoreFailed {
			failed = append(failed, o.String())
		}
	}
	if len(failed) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %d of %d objects failed: %s", ErrRestoreIncomplete, len(failed), len(r.Objects), strings.Join(failed, "; "))
}

type compiledModifier struct {
	index     int
	group     *string
	kind      string
	name, ns  *regexp.Regexp
	selector  labels.Selector
	jsonPatch jsonpatch.Patch
	merge     []byte
}

var jsonPatchOps = map[string]bool{"add": true, "remove": true, "replace": true, "move": true, "copy": true, "test": true}

// Validate checks the options, naming the field at fault and the fix.
func (o *RestoreOptions) Validate() error {
	_, err := o.compile()
	return err
}

func (o *RestoreOptions) compile() ([]compiledModifier, error) {
	bad := func(field, format string, args ...any) error {
		return fmt.Errorf("%w: restore options: %s: %s", ErrInvalidSpec, field, fmt.Sprintf(format, args...))
	}
	switch o.ExistingResourcePolicy {
	case "", ExistingSkip, ExistingUpdate:
	default:
		return nil, bad("existingResourcePolicy", "%q is not a policy; use skip or update", o.ExistingResourcePolicy)
	}
	for from, to := range o.NamespaceMapping {
		if from == "" || to == "" {
			return nil, bad("namespaceMapping", "%q → %q: both namespaces must be named", from, to)
		}
	}
	out := make([]compiledModifier, 0, len(o.Modifiers))
	for i, m := range o.Modifiers {
		f := fmt.Sprintf("resourceModifiers[%d]", i)
		c := compiledModifier{index: i, kind: m.Match.Kind}
		if m.Match.Group != "" {
			g := m.Match.Group
			if g == "core" {
				g = ""
			}
			c.group = &g
		}
		var err error
		if c.name, err = anchored(m.Match.Name); err != nil {
			return nil, bad(f+".match.name", "%v; write a regular expression such as \"data-.*\"", err)
		}
		if c.ns, err = anchored(m.Match.Namespace); err != nil {
			return nil, bad(f+".match.namespace", "%v; write a regular expression such as \"shop|shop-.*\"", err)
		}
		if m.Match.LabelSelector != "" {
			if c.selector, err = labels.Parse(m.Match.LabelSelector); err != nil {
				return nil, bad(f+".match.labelSelector", "%v; write a selector such as \"app=db\"", err)
			}
		}
		hasJSON, hasMerge := len(bytes.TrimSpace(m.JSONPatch)) > 0, len(bytes.TrimSpace(m.MergePatch)) > 0
		switch {
		case hasJSON == hasMerge:
			return nil, bad(f, "give exactly one of jsonPatch (a list of RFC 6902 operations) and mergePatch (an object)")
		case hasJSON:
			var ops []map[string]any
			if err := json.Unmarshal(m.JSONPatch, &ops); err != nil || len(ops) == 0 {
				return nil, bad(f+".jsonPatch", "want a non-empty list of operations such as [{op: replace, path: /spec/storageClassName, value: fast}]")
			}
			for j, op := range ops {
				name, _ := op["op"].(string)
				path, _ := op["path"].(string)
				if !jsonPatchOps[name] {
					return nil, bad(fmt.Sprintf("%s.jsonPatch[%d].op", f, j), "%q is not an operation; use add, remove, replace, move, copy or test", name)
				}
				if !strings.HasPrefix(path, "/") {
					return nil, bad(fmt.Sprintf("%s.jsonPatch[%d].path", f, j), "%q is not a JSON pointer; start it with /, such as /spec/storageClassName", path)
				}
			}
			if c.jsonPatch, err = jsonpatch.DecodePatch(m.JSONPatch); err != nil {
				return nil, bad(f+".jsonPatch", "%v", err)
			}
		default:
			var obj map[string]any
			if err := json.Unmarshal(m.MergePatch, &obj); err != nil {
				return nil, bad(f+".mergePatch", "want an object such as {spec: {storageClassName: fast}}: %v", err)
			}
			c.merge = m.MergePatch
		}
		out = append(out, c)
	}
	return out, nil
}

func anchored(expr string) (*regexp.Regexp, error) {
	if expr == "" {
		return nil, nil
	}
	return regexp.Compile("^(?:" + expr + ")$")
}

func (c *compiledModifier) matches(o *unstructured.Unstructured, sourceNS string) bool {
	gvk := o.GroupVersionKind()
	return (c.group == nil || *c.group == gvk.Group) &&
		(c.kind == "" || strings.EqualFold(c.kind, gvk.Kind)) &&
		(c.name == nil || c.name.MatchString(o.GetName())) &&
		(c.ns == nil || c.ns.MatchString(sourceNS)) &&
		(c.selector == nil || c.selector.Matches(labels.Set(o.GetLabels())))
}

func (c *compiledModifier) apply(o *unstructured.Unstructured) error {
	doc, err := json.Marshal(o.Object)
	if err != nil {
		return err
	}
	if c.jsonPatch != nil {
		doc, err = c.jsonPatch.Apply(doc)
	} else {
		doc, err = jsonpatch.MergePatch(doc, c.merge)
	}
	if err != nil {
		return fmt.Errorf("resourceModifiers[%d] does not apply: %v", c.index, err)
	}
	m := map[string]any{}
	if err := json.Unmarshal(doc, &m); err != nil {
		return err
	}
	o.Object = m
	return nil
}

// restoreItem is one object on its way into the cluster.
type restoreItem struct {
	obj    *unstructured.Unstructured
	owners []metav1.OwnerReference
	uid    types.UID
	result int // index in the report
}

// RestoreManifests applies captured objects (ParseManifests) in
// dependency order: CustomResourceDefinitions (waiting until they are
// served), the Namespace, ResourceQuotas and LimitRanges,
// ServiceAccounts, RBAC, Secrets, ConfigMaps, PVCs, workloads, Services,
// then the rest. Each object is mapped to its new namespace, patched by
// the matching modifiers, and created; one that exists is skipped or
// updated as opts say. Cluster-scoped objects other than Namespaces
// (CRDs) are shared with other applications and never updated. Owner
// references between restored objects are rewritten to the new UIDs.
//
// Bad options are an error before anything is created. Otherwise every
// object is tried and the report says what happened to each; report.Err()
// summarises failures. The error return is for ctx ending.
func (p *Platform) RestoreManifests(ctx context.Context, objs []*unstructured.Unstructured, opts RestoreOptions) (*RestoreReport, error) {
	mods, err := opts.compile()
	if err != nil {
		return nil, err
	}
	policy := opts.ExistingResourcePolicy
	if policy == "" {
		policy = ExistingSkip
	}
	rep := &RestoreReport{}
	items := make([]*restoreItem, 0, len(objs))
	for _, src := range objs {
		o := src.DeepCopy()
		sourceNS := o.GetNamespace()
		it := &restoreItem{obj: o}
		if ann := o.GetAnnotations(); ann[AnnotationOwners] != "" {
			if err := json.Unmarshal([]byte(ann[AnnotationOwners]), &it.owners); err != nil {
				return nil, fmt.Errorf("%w: %s %s: annotation %s: %v", ErrInvalidSpec, o.GetKind(), objectName(o), AnnotationOwners, err)
			}
			delete(ann, AnnotationOwners)
			setAnnotations(o, ann)
		}
		o.SetOwnerReferences(nil)
		CleanObject(o)
		mapNamespaces(o, opts.NamespaceMapping)
		var modErr error
		for i := range mods {
			if mods[i].matches(o, sourceNS) {
				if modErr = mods[i].apply(o); modErr != nil {
					break
				}
			}
		}
		if modErr != nil {
			rep.Objects = append(rep.Objects, resultFor(o, RestoreFailed, modErr.Error()))
			continue
		}
		items = append(items, it)
	}
	sortItems(items)

	ensured := map[string]bool{}
	for _, it := range items {
		if it.obj.GetKind() == "Namespace" && it.obj.GetAPIVersion() == "v1" {
			ensured[it.obj.GetName()] = true
		}
	}
	waitedCRDs := false
	for _, it := range items {
		if err := ctx.Err(); err != nil {
			return rep, err
		}
		o := it.obj
		if !waitedCRDs && restoreRank(o.GroupVersionKind().GroupKind()) > 0 {
			waitedCRDs = true
			p.waitCRDsServed(ctx, items)
		}
		it.result = len(rep.Objects)
		ri, namespaced, err := p.restoreResource(o)
		if err != nil {
			rep.Objects = append(rep.Objects, resultFor(o, RestoreFailed, err.Error()))
			continue
		}
		if namespaced && !ensured[o.GetNamespace()] {
			ensured[o.GetNamespace()] = true
			if r, ok := p.ensureNamespace(ctx, o.GetNamespace()); ok {
				rep.Objects = append(rep.Objects, r)
				it.result = len(rep.Objects)
			}
		}
		rep.Objects = append(rep.Objects, p.restoreOne(ctx, ri, it, namespaced, policy))
	}
	p.relinkOwners(ctx, items, rep)
	return rep, nil
}

func (p *Platform) restoreOne(ctx context.Context, ri dynamic.ResourceInterface, it *restoreItem, namespaced bool, policy ExistingPolicy) ObjectResult {
	o := it.obj
	created, err := ri.Create(ctx, o, metav1.CreateOptions{FieldManager: FieldManager})
	if err == nil {
		it.uid = created.GetUID()
		return resultFor(o, RestoreCreated, "")
	}
	if !apierrors.IsAlreadyExists(err) {
		return resultFor(o, RestoreFailed, apiReason(err))
	}
	existing, err := ri.Get(ctx, o.GetName(), metav1.GetOptions{})
	if err != nil {
		return resultFor(o, RestoreFailed, apiReason(err))
	}
	it.uid = existing.GetUID()
	switch {
	case !namespaced && o.GetKind() != "Namespace":
		return resultFor(o, RestoreSkipped, "exists; cluster-scoped objects are shared with other applications and never updated by a restore")
	case policy == ExistingSkip:
		return resultFor(o, RestoreSkipped, "exists (existingResourcePolicy skip)")
	}
	applied, err := ri.Apply(ctx, o.GetName(), o, metav1.ApplyOptions{FieldManager: FieldManager, Force: true})
	if err != nil {
		return resultFor(o, RestoreFailed, "exists, and updating it failed: "+apiReason(err))
	}
	it.uid = applied.GetUID()
	return resultFor(o, RestoreUpdated, "existed (existingResourcePolicy update)")
}

// restoreResource maps o to its resource, resetting the mapper once for
// kinds a CRD of this restore just added.
func (p *Platform) restoreResource(o *unstructured.Unstructured) (dynamic.ResourceInterface, bool, error) {
	gvk := o.GroupVersionKind()
	m, err := p.c.Mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if meta.IsNoMatchError(err) {
		p.c.Mapper.Reset()
		m, err = p.c.Mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	}
	if err != nil {
		return nil, false, fmt.Errorf("the cluster serves no kind %s in %s: is its CRD installed?", gvk.Kind, gvk.GroupVersion())
	}
	if m.Scope.Name() != meta.RESTScopeNameNamespace {
		o.SetNamespace("")
		return p.c.Dynamic.Resource(m.Resource), false, nil
	}
	if o.GetNamespace() == "" {
		return nil, true, errors.New("a namespaced object without a namespace in the bundle")
	}
	return p.c.Dynamic.Resource(m.Resource).Namespace(o.GetNamespace()), true, nil
}

// ensureNamespace creates ns when it does not exist (a restore into a new
// namespace whose bundle has no Namespace object).
func (p *Platform) ensureNamespace(ctx context.Context, ns string) (ObjectResult, bool) {
	nsGVR := schema.GroupVersionResource{Version: "v1", Resource: "namespaces"}
	obj := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": ns}}}
	_, err := p.c.Dynamic.Resource(nsGVR).Create(ctx, obj, metav1.CreateOptions{FieldManager: FieldManager})
	switch {
	case err == nil:
		return resultFor(obj, RestoreCreated, "the namespace the objects are restored into"), true
	case apierrors.IsAlreadyExists(err):
		return ObjectResult{}, false
	}
	return resultFor(obj, RestoreFailed, apiReason(err)), true
}

// waitCRDsServed waits (within ctx) until the kinds of the restored
// objects whose CRDs this restore created are served, so their objects
// do not fail for a CRD that is still being established.
func (p *Platform) waitCRDsServed(ctx context.Context, items []*restoreItem) {
	var pending []schema.GroupVersionKind
	for _, it := range items {
		if it.obj.GetKind() != "CustomResourceDefinition" || it.uid == "" {
			continue
		}
		group, _, _ := unstructured.NestedString(it.obj.Object, "spec", "group")
		kind, _, _ := unstructured.NestedString(it.obj.Object, "spec", "names", "kind")
		pending = append(pending, schema.GroupVersionKind{Group: group, Kind: kind})
	}
	for len(pending) > 0 {
		p.c.Mapper.Reset()
		left := pending[:0]
		for _, gk := range pending {
			if _, err := p.c.Mapper.RESTMapping(gk.GroupKind()); err != nil {
				left = append(left, gk)
			}
		}
		pending = left
		if len(pending) == 0 {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(p.pollInterval):
		}
	}
}

// relinkOwners sets the owner references of restored objects whose
// owners were restored too, with the owners' new UIDs.
func (p *Platform) relinkOwners(ctx context.Context, items []*restoreItem, rep *RestoreReport) {
	uids := map[string]types.UID{}
	for _, it := range items {
		if it.uid != "" {
			uids[it.obj.GetNamespace()+"/"+ownerKey(it.obj.GetAPIVersion(), it.obj.GetKind(), it.obj.GetName())] = it.uid
		}
	}
	for _, it := range items {
		if len(it.owners) == 0 || it.uid == "" || rep.Objects[it.result].Action == RestoreSkipped {
			continue
		}
		var refs []metav1.OwnerReference
		for _, r := range it.owners {
			uid := uids[it.obj.GetNamespace()+"/"+ownerKey(r.APIVersion, r.Kind, r.Name)]
			if uid == "" {
				continue // the owner failed or is cluster-scoped elsewhere
			}
			r.UID = uid
			refs = append(refs, r)
		}
		if len(refs) == 0 {
			continue
		}
		ri, _, err := p.restoreResource(it.obj)
		if err == nil {
			patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"ownerReferences": refs}})
			_, err = ri.Patch(ctx, it.obj.GetName(), types.MergePatchType, patch, metav1.PatchOptions{FieldManager: FieldManager})
		}
		if err != nil {
			r := &rep.Objects[it.result]
			r.Action, r.Reason = RestoreFailed, "restored, but setting its owner references failed: "+apiReason(err)
		}
	}
}

// mapNamespaces moves o into its mapped namespace, and rewrites the
// namespaces RoleBinding subjects and a Namespace object name.
func mapNamespaces(o *unstructured.Unstructured, mapping map[string]string) {
	if len(mapping) == 0 {
		return
	}
	if to, ok := mapping[o.GetNamespace()]; ok {
		o.SetNamespace(to)
	}
	switch o.GroupVersionKind().GroupKind() {
	case schema.GroupKind{Kind: "Namespace"}:
		if to, ok := mapping[o.GetName()]; ok {
			o.SetName(to)
		}
	case schema.GroupKind{Group: "rbac.authorization.k8s.io", Kind: "RoleBinding"},
		schema.GroupKind{Group: "rbac.authorization.k8s.io", Kind: "ClusterRoleBinding"}:
		subjects, _, _ := unstructured.NestedSlice(o.Object, "subjects")
		for _, s := range subjects {
			sm := s.(map[string]any)
			if ns, _ := sm["namespace"].(string); ns != "" {
				if to, ok := mapping[ns]; ok {
					sm["namespace"] = to
				}
			}
		}
		if subjects != nil {
			_ = unstructured.SetNestedSlice(o.Object, subjects, "subjects")
		}
	}
}

func sortItems(items []*restoreItem) {
	objs := make([]*unstructured.Unstructured, len(items))
	byObj := make(map[*unstructured.Unstructured]*restoreItem, len(items))
	for i, it := range items {
		objs[i] = it.obj
		byObj[it.obj] = it
	}
	sortForRestore(objs)
	for i, o := range objs {
		items[i] = byObj[o]
	}
}

func resultFor(o *unstructured.Unstructured, a RestoreAction, reason string) ObjectResult {
	return ObjectResult{APIVersion: o.GetAPIVersion(), Kind: o.GetKind(), Namespace: o.GetNamespace(), Name: o.GetName(), Action: a, Reason: reason}
}

// apiReason is the apiserver's message without client-go's prefixes.
func apiReason(err error) string {
	var st apierrors.APIStatus
	if errors.As(err, &st) && st.Status().Message != "" {
		return st.Status().Message
	}
	return err.Error()
}

func objectPath(ns, name string) string {
	if ns == "" {
		return name
	}
	return ns + "/" + name
}
