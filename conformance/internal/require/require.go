// Package require is a small stand-in for github.com/stretchr/testify/require
// with the same names and argument order, for the conformance suite.
//
// It exists only because testify's assert package imports
// go.yaml.in/yaml/v3 (and go-spew, go-difflib), which the module's go.sum
// does not hold; helpers may not change go.mod/go.sum. Once they do, replace
// the import path "github.com/chanwatch/chanwatch/conformance/internal/require"
// with "github.com/stretchr/testify/require" and delete this package: every
// call site already uses testify's signatures. Every function fails the test
// at once (t.FailNow), so it must be called from the test's goroutine.
package require

import (
	"cmp"
	"errors"
	"fmt"
	"reflect"
	"strings"

	gocmp "github.com/google/go-cmp/cmp"
)

// TestingT is the part of testing.TB the checks use.
type TestingT interface {
	Helper()
	Errorf(format string, args ...any)
	FailNow()
}

func fail(t TestingT, failure string, msgAndArgs []any) {
	t.Helper()
	if msg := message(msgAndArgs); msg != "" {
		t.Errorf("%s\n\tmessage: %s", failure, msg)
	} else {
		t.Errorf("%s", failure)
	}
	t.FailNow()
}

// message formats testify-style trailing arguments: a format string and its
// arguments, or a single value.
func message(msgAndArgs []any) string {
	switch len(msgAndArgs) {
	case 0:
		return ""
	case 1:
		if s, ok := msgAndArgs[0].(string); ok {
			return s
		}
		return fmt.Sprintf("%+v", msgAndArgs[0])
	}
	if format, ok := msgAndArgs[0].(string); ok {
		return fmt.Sprintf(format, msgAndArgs[1:]...)
	}
	return fmt.Sprint(msgAndArgs...)
}

// equal is testify's ObjectsAreEqual: bytes compare by content, everything
// else with reflect.DeepEqual.
func equal(expected, actual any) bool {
	if expected == nil || actual == nil {
		return expected == actual
	}
	eb, eok := expected.([]byte)
	ab, aok := actual.([]byte)
	if eok && aok {
		return string(eb) == string(ab) && (eb == nil) == (ab == nil)
	}
	return reflect.DeepEqual(expected, actual)
}

func diff(expected, actual any) string {
	defer func() { _ = recover() }() // cmp.Diff panics on unexported fields
	return gocmp.Diff(expected, actual)
}

// Equal requires expected and actual to be deeply equal.
func Equal(t TestingT, expected, actual any, msgAndArgs ...any) {
	t.Helper()
	if !equal(expected, actual) {
		fail(t, fmt.Sprintf("not equal:\n\texpected: %#v\n\tactual:   %#v\n\tdiff (-expected +actual):\n%s", expected, actual, diff(expected, actual)), msgAndArgs)
	}
}

// NotEqual requires expected and actual to differ.
func NotEqual(t TestingT, expected, actual any, msgAndArgs ...any) {
	t.Helper()
	if equal(expected, actual) {
		fail(t, fmt.Sprintf("should not be equal: %#v", actual), msgAndArgs)
	}
}

// NoError requires err to be nil.
func NoError(t TestingT, err error, msgAndArgs ...any) {
	t.Helper()
	if err != nil {
		fail(t, fmt.Sprintf("unexpected error: %v", err), msgAndArgs)
	}
}

// ErrorIs requires errors.Is(err, target).
func ErrorIs(t TestingT, err, target error, msgAndArgs ...any) {
	t.Helper()
	if !errors.Is(err, target) {
		fail(t, fmt.Sprintf("error %v does not wrap %v", err, target), msgAndArgs)
	}
}

// True requires value to be true.
func True(t TestingT, value bool, msgAndArgs ...any) {
	t.Helper()
	if !value {
		fail(t, "should be true", msgAndArgs)
	}
}

// False requires value to be false.
func False(t TestingT, value bool, msgAndArgs ...any) {
	t.Helper()
	if value {
		fail(t, "should be false", msgAndArgs)
	}
}

// isNil reports whether object is nil or a nil pointer, map, slice, chan,
// func or interface.
func isNil(object any) bool {
	if object == nil {
		return true
	}
	v := reflect.ValueOf(object)
	switch v.Kind() {
	case reflect.Chan, reflect.Func, reflect.Interface, reflect.Map, reflect.Pointer, reflect.Slice, reflect.UnsafePointer:
		return v.IsNil()
	}
	return false
}

// Nil requires object to be nil.
func Nil(t TestingT, object any, msgAndArgs ...any) {
	t.Helper()
	if !isNil(object) {
		fail(t, fmt.Sprintf("expected nil, got %#v", object), msgAndArgs)
	}
}

// NotNil requires object not to be nil.
func NotNil(t TestingT, object any, msgAndArgs ...any) {
	t.Helper()
	if isNil(object) {
		fail(t, "expected a value, got nil", msgAndArgs)
	}
}

// isEmpty is testify's ObjectsAreEmpty: nil, a zero value, or a zero-length
// array, chan, map, slice or string.
func isEmpty(object any) bool {
	if object == nil {
		return true
	}
	v := reflect.ValueOf(object)
	switch v.Kind() {
	case reflect.Array, reflect.Chan, reflect.Map, reflect.Slice, reflect.String:
		return v.Len() == 0
	case reflect.Pointer:
		return v.IsNil() || isEmpty(v.Elem().Interface())
	}
	return v.IsZero()
}

// Empty requires object to be empty (see isEmpty).
func Empty(t TestingT, object any, msgAndArgs ...any) {
	t.Helper()
	if !isEmpty(object) {
		fail(t, fmt.Sprintf("should be empty, is %#v", object), msgAndArgs)
	}
}

// NotEmpty requires object not to be empty.
func NotEmpty(t TestingT, object any, msgAndArgs ...any) {
	t.Helper()
	if isEmpty(object) {
		fail(t, fmt.Sprintf("should not be empty, is %#v", object), msgAndArgs)
	}
}

// Zero requires object to be its type's zero value.
func Zero(t TestingT, object any, msgAndArgs ...any) {
	t.Helper()
	if object != nil && !reflect.ValueOf(object).IsZero() {
		fail(t, fmt.Sprintf("should be zero, is %#v", object), msgAndArgs)
	}
}

// Len requires object (array, chan, map, slice or string) to have length n.
func Len(t TestingT, object any, n int, msgAndArgs ...any) {
	t.Helper()
	v := reflect.ValueOf(object)
	switch v.Kind() {
	case reflect.Array, reflect.Chan, reflect.Map, reflect.Slice, reflect.String:
		if v.Len() != n {
			fail(t, fmt.Sprintf("should have %d item(s), has %d: %#v", n, v.Len(), object), msgAndArgs)
		}
	default:
		fail(t, fmt.Sprintf("%#v has no length", object), msgAndArgs)
	}
}

// Greater requires e1 > e2.
func Greater[T cmp.Ordered](t TestingT, e1, e2 T, msgAndArgs ...any) {
	t.Helper()
	if !(e1 > e2) {
		fail(t, fmt.Sprintf("%v is not greater than %v", e1, e2), msgAndArgs)
	}
}

// GreaterOrEqual requires e1 >= e2.
func GreaterOrEqual[T cmp.Ordered](t TestingT, e1, e2 T, msgAndArgs ...any) {
	t.Helper()
	if !(e1 >= e2) {
		fail(t, fmt.Sprintf("%v is not greater than or equal to %v", e1, e2), msgAndArgs)
	}
}

// Less requires e1 < e2.
func Less[T cmp.Ordered](t TestingT, e1, e2 T, msgAndArgs ...any) {
	t.Helper()
	if !(e1 < e2) {
		fail(t, fmt.Sprintf("%v is not less than %v", e1, e2), msgAndArgs)
	}
}

// LessOrEqual requires e1 <= e2.
func LessOrEqual[T cmp.Ordered](t TestingT, e1, e2 T, msgAndArgs ...any) {
	t.Helper()
	if !(e1 <= e2) {
		fail(t, fmt.Sprintf("%v is not less than or equal to %v", e1, e2), msgAndArgs)
	}
}

// Positive requires e > 0.
func Positive[T cmp.Ordered](t TestingT, e T, msgAndArgs ...any) {
	t.Helper()
	var zero T
	if !(e > zero) {
		fail(t, fmt.Sprintf("%v is not positive", e), msgAndArgs)
	}
}

// ElementsMatch requires listA and listB (slices or arrays) to hold the same
// elements with the same multiplicity, in any order.
func ElementsMatch(t TestingT, listA, listB any, msgAndArgs ...any) {
	t.Helper()
	a, b := reflect.ValueOf(listA), reflect.ValueOf(listB)
	for _, v := range []reflect.Value{a, b} {
		if v.Kind() != reflect.Slice && v.Kind() != reflect.Array {
			fail(t, fmt.Sprintf("%#v is not a list", v), msgAndArgs)
			return
		}
	}
	used := make([]bool, b.Len())
	var missing []string
	for i := range a.Len() {
		found := false
		for j := range b.Len() {
			if !used[j] && equal(a.Index(i).Interface(), b.Index(j).Interface()) {
				used[j], found = true, true
				break
			}
		}
		if !found {
			missing = append(missing, fmt.Sprintf("%v", a.Index(i).Interface()))
		}
	}
	var extra []string
	for j := range b.Len() {
		if !used[j] {
			extra = append(extra, fmt.Sprintf("%v", b.Index(j).Interface()))
		}
	}
	if len(missing) > 0 || len(extra) > 0 {
		fail(t, fmt.Sprintf("elements differ:\n\tonly in the first:  %s\n\tonly in the second: %s",
			strings.Join(missing, ", "), strings.Join(extra, ", ")), msgAndArgs)
	}
}
