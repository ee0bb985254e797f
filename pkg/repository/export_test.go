package repository

// SetBeforeVerify lets tests damage a restored tree between the restore and
// its verification.
func (r *Repository) SetBeforeVerify(f func(dir string)) { r.beforeVerify = f }
