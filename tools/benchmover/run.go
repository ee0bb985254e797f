package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/tidemark-dev/tidemark/events"
)

// run measures every phase, interleaved round by round, and prints the
// report.
func (b *bench) run() error {
	var volumes dataset
	if b.phases["volumes"] {
		var err error
		if volumes, err = ensure(filepath.Join(b.dir, "data"), fmt.Sprintf("volumes-%d", b.volumes), func(d string) error { return manyVolumes(d, b.volumes) }); err != nil {
			return err
		}
	}
	env, err := startBus(filepath.Join(b.work, "nats"))
	if err != nil {
		return err
	}
	defer env.stop()
	res := results{}
	for round := range b.rounds {
		for _, ds := range b.data {
			if b.phases["export"] || b.phases["reexport"] || b.phases["import"] {
				if err := b.roundDataset(env, ds, round, res); err != nil {
					return err
				}
			}
		}
		if b.phases["volumes"] {
			if err := b.roundVolumes(env, volumes, round, res); err != nil {
				return err
			}
		}
	}
	b.report(res, volumes)
	return nil
}

// roundDataset runs one round on ds: full export (Tidemark, kopia CLI,
// tar | zstd), re-export of the unchanged tree, import and restore.
func (b *bench) roundDataset(env *busEnv, ds dataset, round int, res results) error {
	logf("round %d, %s", round+1, ds.Name)
	warm(ds.Dir)
	root := filepath.Dir(ds.Dir)
	app := "bench/" + ds.Name
	name := func(what string) string { return ds.Name + "|" + what }

	// Tidemark without compression (TIDEMARK_REPOSITORY_COMPRESSION=none),
	// like the kopia CLI's defaults. Its mover is the only one running:
	// movers share the work queue.
	{
		repo := b.fresh("tm-repo-none-" + ds.Name)
		b.clean(repo + "-cache")
		m, err := b.startMover(env, repo, root, 1, "-compression", "none")
		if err != nil {
			return err
		}
		run := events.RunID(fmt.Sprintf("bench-%d-%s-none", round, ds.Name))
		syncDisk()
		d, err := timed(func() error {
			if _, err := env.publish(exportCmd(run, "bench/none-"+ds.Name, "data", ds.Name), app); err != nil {
				return err
			}
			_, err := env.await(1, time.Hour, exportResult(run))
			syncDisk()
			return err
		})
		if err != nil {
			return err
		}
		res.add(name("tm-export-none"), sample{d: d, bytes: diskUsage(repo)})
		m.stop()
		b.clean(repo, repo+"-cache")
	}

	// Tidemark: one mover process on a new repository.
	repo := b.fresh("tm-repo-" + ds.Name)
	b.clean(repo + "-cache")
	m, err := b.startMover(env, repo, root, 1)
	if err != nil {
		return err
	}
	defer b.clean(repo, repo+"-cache")
	full := events.RunID(fmt.Sprintf("bench-%d-%s-full", round, ds.Name))
	var exported events.VolumeExported
	syncDisk()
	d, err := timed(func() error {
		if _, err := env.publish(exportCmd(full, app, "data", ds.Name), app); err != nil {
			return err
		}
		evs, err := env.await(1, time.Hour, exportResult(full))
		if err != nil {
			return err
		}
		exported, _ = events.As[events.VolumeExported](evs[0])
		syncDisk()
		return nil
	})
	if err != nil {
		return err
	}
	res.add(name("tm-export"), sample{d: d, bytes: diskUsage(repo)})

	// The stock kopia CLI with its defaults, on a new repository.
	k := kopiaCLI{bin: b.kopia, dir: b.fresh("kopia-" + ds.Name)}
	krepo := b.fresh("kopia-repo-" + ds.Name)
	defer b.clean(k.dir, krepo)
	if _, err := k.run("repository", "create", "filesystem", "--path="+krepo); err != nil {
		return err
	}
	syncDisk()
	if d, err = timed(func() error { _, err := k.run("snapshot", "create", ds.Dir); syncDisk(); return err }); err != nil {
		return err
	}
	res.add(name("kopia-export"), sample{d: d, bytes: diskUsage(krepo)})

	// tar | zstd (zstd's defaults: level 3, one thread).
	archive := filepath.Join(b.work, "archive.tar.zst")
	syncDisk()
	if d, err = timed(func() error {
		err := shell(fmt.Sprintf("tar -C %q -cf - . | zstd -q -o %q", ds.Dir, archive))
		syncDisk()
		return err
	}); err != nil {
		return err
	}
	fi, _ := os.Stat(archive)
	res.add(name("tar-zstd"), sample{d: d, bytes: fi.Size()})
	b.clean(archive)

	if b.phases["reexport"] {
		again := events.RunID(fmt.Sprintf("bench-%d-%s-again", round, ds.Name))
		var re events.VolumeExported
		if d, err = timed(func() error {
			if _, err := env.publish(exportCmd(again, app, "data", ds.Name), app); err != nil {
				return err
			}
			evs, err := env.await(1, time.Hour, exportResult(again))
			if err == nil {
				re, _ = events.As[events.VolumeExported](evs[0])
			}
			// No sync: a few kilobytes are written, and a sync would
			// time the machine's other writes.
			return err
		}); err != nil {
			return err
		}
		res.add(name("tm-reexport"), sample{d: d, extra: float64(re.BytesUploaded)})
		if d, err = timed(func() error { _, err := k.run("snapshot", "create", ds.Dir); return err }); err != nil {
			return err
		}
		res.add(name("kopia-reexport"), sample{d: d})
	}

	if b.phases["import"] {
		target := b.fresh("restore-tm")
		restore := events.RunID(fmt.Sprintf("bench-%d-%s-restore", round, ds.Name))
		syncDisk()
		if d, err = timed(func() error {
			if _, err := env.publish(events.VolumeImportRequested{
				RunID: restore, Volume: "data", ManifestID: exported.ManifestID, Repository: "default",
				TargetKind: "directory", Target: target, IdempotencyKey: string(restore) + ":data",
			}, app); err != nil {
				return err
			}
			_, err := env.await(1, time.Hour, importResult(restore))
			syncDisk()
			return err
		}); err != nil {
			return err
		}
		res.add(name("tm-import"), sample{d: d})
		b.clean(target)

		out, err := k.run("snapshot", "list", ds.Dir, "--json")
		if err != nil {
			return err
		}
		var snaps []struct {
			ID string `json:"id"`
		}
		if err := json.Unmarshal([]byte(out), &snaps); err != nil || len(snaps) == 0 {
			return fmt.Errorf("kopia snapshot list: %v (%d snapshots)", err, len(snaps))
		}
		target = b.fresh("restore-kopia")
		syncDisk()
		if d, err = timed(func() error { _, err := k.run("snapshot", "restore", snaps[0].ID, target); syncDisk(); return err }); err != nil {
			return err
		}
		res.add(name("kopia-import"), sample{d: d})
		b.clean(target)
	}
	res.add(name("rss"), sample{extra: float64(m.stop())})
	return nil
}

// roundVolumes moves the many small volumes through the work queue with
// one mover and with four, and all of them as one volume for the baseline
// of the per-volume overhead.
func (b *bench) roundVolumes(env *busEnv, vols dataset, round int, res results) error {
	warm(vols.Dir)
	root := filepath.Dir(vols.Dir)
	app := "bench/volumes"
	for _, n := range []int{1, 4} {
		logf("round %d, %d volumes, %d movers", round+1, b.volumes, n)
		repo := b.fresh("tm-volumes")
		b.clean(repo + "-cache")
		var movers []*mover
		for i := range n {
			m, err := b.startMover(env, repo, root, 1)
			if err != nil {
				return err
			}
			movers = append(movers, m)
			if i == 0 {
				// The first creates the repository; the others join it.
				time.Sleep(100 * time.Millisecond)
			}
		}
		run := events.RunID(fmt.Sprintf("bench-%d-volumes-%d", round, n))
		syncDisk()
		d, err := timed(func() error {
			for i := range b.volumes {
				vol := fmt.Sprintf("vol%04d", i)
				if _, err := env.publish(exportCmd(run, app, vol, filepath.Join(filepath.Base(vols.Dir), vol)), app); err != nil {
					return err
				}
			}
			_, err := env.await(b.volumes, time.Hour, exportResult(run))
			syncDisk()
			return err
		})
		if err != nil {
			return err
		}
		var peak int64
		for _, m := range movers {
			peak = max(peak, m.stop())
		}
		res.add(fmt.Sprintf("volumes|%d", n), sample{d: d, extra: float64(peak)})
		b.clean(repo, repo+"-cache")
	}

	// Baseline: the same data as one volume.
	repo := b.fresh("tm-volumes-one")
	m, err := b.startMover(env, repo, root, 1)
	if err != nil {
		return err
	}
	run := events.RunID(fmt.Sprintf("bench-%d-volumes-one", round))
	syncDisk()
	d, err := timed(func() error {
		if _, err := env.publish(exportCmd(run, app, "all", filepath.Base(vols.Dir)), app); err != nil {
			return err
		}
		_, err := env.await(1, time.Hour, exportResult(run))
		syncDisk()
		return err
	})
	if err != nil {
		return err
	}
	m.stop()
	res.add("volumes|one", sample{d: d})
	b.clean(repo, repo+"-cache")
	return nil
}

func (b *bench) report(res results, vols dataset) {
	var w strings.Builder
	fmt.Fprintf(&w, "Measured with `go run ./tools/benchmover -rounds %d` on %s; every figure is the median of %d interleaved rounds, ratios are medians of per-round ratios.\n\n", b.rounds, machine(), b.rounds)
	if b.phases["export"] {
		fmt.Fprintf(&w, "| data set | export with | time | throughput | vs kopia CLI | stored |\n|---|---|---|---|---|---|\n")
		for _, ds := range b.data {
			n := func(s string) string { return ds.Name + "|" + s }
			for _, row := range []struct{ what, key string }{
				{"Tidemark (defaults: BLAKE3, s2)", "tm-export"},
				{"Tidemark, compression none", "tm-export-none"},
				{"kopia CLI `snapshot create`, defaults", "kopia-export"},
				{"`tar \\| zstd` (zstd -3, 1 thread)", "tar-zstd"},
			} {
				ratio := fmt.Sprintf("**%.2f×**", res.ratio(n(row.key), n("kopia-export")))
				if row.key == "kopia-export" {
					ratio = "1.00×"
				}
				fmt.Fprintf(&w, "| %s (%d files, %s) | %s | %.2f s | %s | %s | %s |\n", ds.Name, ds.Files, mib(ds.Bytes), row.what,
					res.seconds(n(row.key)), rate(ds.Bytes, res.seconds(n(row.key))), ratio, mib(res.size(n(row.key))))
			}
		}
		fmt.Fprintln(&w)
	}
	if b.phases["reexport"] {
		fmt.Fprintf(&w, "| data set | Tidemark re-export (unchanged) | vs its full export | bytes uploaded | kopia CLI re-snapshot |\n|---|---|---|---|---|\n")
		for _, ds := range b.data {
			n := func(s string) string { return ds.Name + "|" + s }
			fmt.Fprintf(&w, "| %s | %.3f s | **%.3f×** | %.0f | %.3f s |\n", ds.Name, res.seconds(n("tm-reexport")),
				1/res.ratio(n("tm-reexport"), n("tm-export")), res.extra(n("tm-reexport")), res.seconds(n("kopia-reexport")))
		}
		fmt.Fprintln(&w)
	}
	if b.phases["import"] {
		fmt.Fprintf(&w, "| data set | Tidemark import | kopia CLI `snapshot restore` | Tidemark vs kopia CLI | peak RSS of the mover (export, re-export, import) |\n|---|---|---|---|---|\n")
		for _, ds := range b.data {
			n := func(s string) string { return ds.Name + "|" + s }
			fmt.Fprintf(&w, "| %s | %.2f s (%s) | %.2f s (%s) | **%.2f×** | %s |\n", ds.Name,
				res.seconds(n("tm-import")), rate(ds.Bytes, res.seconds(n("tm-import"))),
				res.seconds(n("kopia-import")), rate(ds.Bytes, res.seconds(n("kopia-import"))),
				res.ratio(n("tm-import"), n("kopia-import")), mib(int64(res.extra(n("rss")))))
		}
		fmt.Fprintln(&w)
	}
	if b.phases["volumes"] {
		one := res.seconds("volumes|one")
		fmt.Fprintf(&w, "%d volumes of 1 MiB (%s in all) through the work queue, from the first command published to the last `volume.exported`; baseline: the same tree as one volume, %.2f s.\n\n", b.volumes, mib(vols.Bytes), one)
		fmt.Fprintf(&w, "| movers | wall time | volumes/s | per volume | overhead per volume (vs one volume) | peak RSS of a mover |\n|---|---|---|---|---|---|\n")
		for _, n := range []int{1, 4} {
			s := res.seconds(fmt.Sprintf("volumes|%d", n))
			per := s / float64(b.volumes)
			fmt.Fprintf(&w, "| %d | %.1f s | %.0f | %.1f ms | **%.1f ms** | %s |\n", n, s, float64(b.volumes)/s, per*1000,
				(s-one)/float64(b.volumes)*1000, mib(int64(res.extra(fmt.Sprintf("volumes|%d", n)))))
		}
		fmt.Fprintln(&w)
	}
	fmt.Print(w.String())
}
