"""The LeNet-5 run: every section of ``--sections`` at each thread count of ``--threads``,
printed as it goes and gathered into the report's ``by_threads``, ``scaling`` and
``memory_mib_after_epochs``."""

from __future__ import annotations

from .common import fmt
from .lenet import inference, memory_over_epochs, per_layer, scaling, train_epochs, tutorial


def run_lenet(backend, args, peer, report):
    """Run the LeNet-5 sections into ``report`` (a dict), printing a table per thread count."""
    torch = peer.torch if peer is not None else None
    for threads in args.threads:
        with backend.limit_threads(threads):
            if torch is not None:
                torch.set_num_threads(threads)
            pools = backend.thread_info()
            if torch is not None:
                pools["torch"] = torch.get_num_threads()
            print(f"== threads: {pools}")
            entry = {"threads": threads, "pools": pools}
            if "layers" in args.sections:
                entry["layers"] = per_layer(backend, args.batch_size, args.dtype, args.repeats,
                                            peer)
                print(f"  {'layer':<10} {'fwd ms':>8} {'bwd ms':>8}"
                      + (f" {'torch fwd':>10} {'torch bwd':>10}" if torch else ""))
                for row in entry["layers"]:
                    print(f"  {row['layer']:<10} {row['forward_ms']:8.3f} {row['backward_ms']:8.3f}"
                          + (f" {row['torch_forward_ms']:10.3f} {row['torch_backward_ms']:10.3f}"
                             if torch else ""))
            if "train" in args.sections:
                print(f"  training epoch ({args.images:,} images):")
                tr = entry["train"] = train_epochs(backend, args, threads, peer)
                print(f"  portacnn: {fmt(tr['portacnn'])}")
                if torch is not None:
                    print(f"  pytorch:  {fmt(tr['torch'])}  (TF32 off: float32 as CuPy)")
                    print(f"  ratio portacnn/pytorch: {fmt(tr['ratio_portacnn_over_torch'], 'x')}"
                          f"  (first-epoch loss {tr['portacnn_loss_first_epoch']:.4f} vs "
                          f"{tr['torch_loss_first_epoch']:.4f})")
            if "infer" in args.sections:
                entry["inference"] = inference(backend, args, peer)
                for row in entry["inference"]:
                    line = (f"  inference batch {row['batch_size']:>5}: portacnn "
                            f"{row['portacnn_images_per_s']['median']:>9,.0f} images/s")
                    if "torch_images_per_s" in row:
                        ratio = row["ratio_portacnn_over_torch"]
                        line += (f", pytorch {row['torch_images_per_s']['median']:>9,.0f} images/s"
                                 f", ratio {ratio['median']:.2f}x [{ratio['min']:.2f}-"
                                 f"{ratio['max']:.2f}]")
                    print(line)
            if args.compare_tutorial and threads == args.threads[0] and not backend.accelerator:
                tut = entry["tutorial"] = tutorial(backend, args)
                print(f"  tutorial-style NumPy: {fmt(tut['epoch_seconds_scaled'])} per epoch, "
                      f"portacnn {fmt(tut['portacnn_epoch_seconds_scaled'])} (both scaled from "
                      f"{tut['images_timed']:,} images, interleaved): portacnn is "
                      f"{fmt(tut['speedup_portacnn_over_tutorial'], 'x')} faster")
            if threads == args.threads[0]:
                if "scaling" in args.sections:
                    report["scaling"] = scaling(backend, args)
                    print("  scaling (training, per image):")
                    for row in report["scaling"]:
                        mem = "n/a" if row["peak_mib"] is None else f"{row['peak_mib']:.1f} MiB"
                        print(f"    batch {row['batch_size']:>4}, {row['image_size']:>3}px: "
                              f"{row['us_per_image']['median']:8.1f} us/image, peak {mem}")
                if "memory" in args.sections:
                    report["memory_mib_after_epochs"] = memory_over_epochs(backend, args)
                    mib = report["memory_mib_after_epochs"]
                    if mib is not None:
                        print(f"  traced memory after epochs 1-{len(mib)}: "
                              + ", ".join(f"{m:.3f}" for m in mib) + " MiB")
            report["by_threads"].append(entry)
            print()
