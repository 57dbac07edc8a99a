using System.Globalization;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Requests;
using ActorBlk.Hardware.Sysfs;

namespace ActorBlk.Hardware.Drivers.Stacking;

// The md/ directory of the device's attribute tree.
public sealed partial class MirrorTarget
{
    /// <inheritdoc />
    public void AddAttributes(string deviceDirectory, AttributeAdder add)
    {
        ArgumentNullException.ThrowIfNull(add);
        var md = deviceDirectory + "md/";
        add(md + "level", () => "raid1\n", null);
        add(md + "raid_disks", () => Line(_legs.Length), null);
        add(md + "degraded", () => Line(Degraded), null);
        add(md + "sync_action", () => SyncAction + "\n", (path, text) => SyncActionStoreAsync(path, Command(text)));
        add(md + "sync_completed", () =>
        {
            var (done, total) = SyncProgress;
            return total == 0 ? "none\n" : $"{done >> Bio.SectorShift} / {total >> Bio.SectorShift}\n";
        }, null);
        add(md + "sync_speed", () => SyncAction == "idle" ? "none\n" : Line(Interlocked.Read(ref _syncSpeedKiB)), null);
        add(md + "sync_speed_min", () => Speed(Volatile.Read(ref _syncSpeedMinLocalKiB), Options.SyncSpeedMinKiB), (path, text) => SetSpeed(path, text, min: true));
        add(md + "sync_speed_max", () => Speed(Volatile.Read(ref _syncSpeedMaxLocalKiB), Options.SyncSpeedMaxKiB), (path, text) => SetSpeed(path, text, min: false));
        add(md + "mismatch_cnt", () => Line(MismatchSectors), null);
        add(md + "events", () => Line(Generation), null);
        add(md + "bitmap/chunksize", () => Line(RegionBytes), null);

        // md's new_dev: write-only (a read is EACCES), and only where the block layer installed
        // its replacement, which resolves, claims and holds the member as a table's leg.
        if (LegReplacer is { } replacer)
        {
            add(md + "new_dev", null, (path, text) => NewDevAsync(replacer, path, text));
        }

        for (var i = 0; i < _legs.Length; i++)
        {
            var leg = i;
            var dir = $"{md}dev-{_legs[i].Name}/";
            add(dir + "state", () => State(LegState(leg)) + "\n", async (path, text) =>
            {
                try
                {
                    switch (Command(text))
                    {
                        case "faulty":
                            await FailLegAsync(leg).ConfigureAwait(false);
                            break;
                        case "re-add":
                            await ReAddAsync(leg).ConfigureAwait(false);
                            break;
                        default:
                            throw new AttributeException(path, AttributeErrno.EINVAL, $"'{Command(text)}' is not faulty or re-add");
                    }
                }
                catch (MirrorLegTooSmallException ex)
                {
                    // A leg back smaller than the mirror's legs: ENOSPC, as new_dev's.
                    throw new AttributeException(path, AttributeErrno.ENOSPC, ex.Message);
                }
                catch (InvalidOperationException ex)
                {
                    throw new AttributeException(path, AttributeErrno.EBUSY, ex.Message);
                }
                catch (BlockIoException ex)
                {
                    throw new AttributeException(path, AttributeErrno.EBUSY, ex.Message);
                }
            });
            add(dir + "errors", () => Line(CorrectedReadErrors(leg)), null);
            add(dir + "slot", () => Line(leg), null);
        }
    }

    // md's action_store: "frozen" stops the sync running (and waits for it) and starts none until
    // "idle", "recover", "resync", "check" or "repair" is written, each of which clears it; while a
    // sync runs, "recover", "resync", "check" and "repair" are EBUSY; "idle" stops a check or
    // repair (a recovery or resync goes on, as md's restarts it from where it was) and starts
    // what is owed.
    private async ValueTask SyncActionStoreAsync(string path, string action)
    {
        switch (action)
        {
            case "frozen":
                await FreezeSyncAsync().ConfigureAwait(false);
                break;
            case "idle":
                CancellationTokenSource? stop;
                lock (_lock)
                {
                    _frozen = false;
                    stop = _syncAction is "check" or "repair" && !_sync.IsCompleted ? _checkStop : null;
                }

                if (stop is not null)
                {
                    await stop.CancelAsync().ConfigureAwait(false);
                }

                KickSync();
                break;
            case "check":
            case "repair":
                try
                {
                    _ = action == "check" ? CheckAsync() : RepairAsync();
                }
                catch (InvalidOperationException ex)
                {
                    throw new AttributeException(path, AttributeErrno.EBUSY, ex.Message);
                }

                break;
            case "recover":
            case "resync":
                // md's MD_RECOVERY_NEEDED: starts a recovery or resync that has work and is not
                // running (one that stopped for want of a readable leg, or held by "frozen"); else nothing to do.
                lock (_lock)
                {
                    if (!_sync.IsCompleted)
                    {
                        throw new AttributeException(path, AttributeErrno.EBUSY, $"{_name}: a sync runs (sync_action: {_syncAction}); write idle or frozen to stop it first");
                    }

                    _frozen = false;
                }

                KickSync();
                break;
            default:
                throw new AttributeException(path, AttributeErrno.EINVAL, $"'{action}' is not check, repair, recover, resync, idle or frozen");
        }
    }

    // md's new_dev_store adds the device into the first free slot; here the lowest-numbered
    // faulty slot takes it (md's --remove then --add), and the write ends when the device is in
    // the slot, rebuilding; the recovery goes on after it.
    private async ValueTask NewDevAsync(Func<int, string, Task> replacer, string path, string text)
    {
        var member = text.Trim();
        if (member.Length == 0)
        {
            throw new AttributeException(path, AttributeErrno.EINVAL, "no device named: write the new leg's name (a device of this node, name@host:port, or a name another node has)");
        }

        int slot;
        lock (_lock)
        {
            slot = Array.IndexOf(_state, MirrorLegState.Faulty);
        }

        if (slot < 0)
        {
            throw new AttributeException(path, AttributeErrno.EBUSY, $"{_name} has no faulty leg: only a faulty leg is replaced (fail one first: md/dev-<leg>/state faulty)");
        }

        try
        {
            await replacer(slot, member).ConfigureAwait(false);
        }
        catch (MirrorLegTooSmallException ex)
        {
            // md's bind_rdev_to_array: a disk smaller than the array's members is ENOSPC.
            throw new AttributeException(path, AttributeErrno.ENOSPC, ex.Message);
        }
        catch (InvalidOperationException ex)
        {
            throw new AttributeException(path, AttributeErrno.EBUSY, ex.Message);
        }
        catch (KeyNotFoundException ex)
        {
            throw new AttributeException(path, AttributeErrno.ENOENT, ex.Message);
        }
        catch (ArgumentException ex) when (ex.InnerException is DeviceBusyException)
        {
            // Claimed by another stacked device: md's claim of a held device fails with EBUSY.
            throw new AttributeException(path, AttributeErrno.EBUSY, ex.Message);
        }
        catch (ArgumentException ex)
        {
            // DeviceOptionsException: the member is unknown, unreachable, the mirror itself or
            // stacked over it.
            throw new AttributeException(path, AttributeErrno.ENXIO, ex.Message);
        }
    }

    // md's sync_min_show / sync_max_show: "%d (%s)\n", the limit and whether it is the array's own
    // ("local") or the system's. md prints an int, so a limit above INT_MAX shows negative there;
    // here it shows as the unsigned number written.
    private static string Speed(long local, long system) =>
        string.Create(CultureInfo.InvariantCulture, $"{(local != 0 ? local : system)} ({(local != 0 ? "local" : "system")})\n");

    private ValueTask SetSpeed(string path, string text, bool min)
    {
        // md: any value starting with "system" (strncmp(buf, "system", 6)) takes back the system's
        // limit, here the mirror's options (md's /proc/sys/dev/raid/speed_limit_min and _max).
        if (text.StartsWith("system", StringComparison.Ordinal))
        {
            Volatile.Write(ref min ? ref _syncSpeedMinLocalKiB : ref _syncSpeedMaxLocalKiB, 0);
            return ValueTask.CompletedTask;
        }

        // md's min_sync_store / max_sync_store: kstrtouint, so a decimal up to UINT_MAX with one
        // optional leading '+' and one trailing newline, nothing else (no spaces, '-' or hex); 0 is
        // refused. md returns kstrtouint's error: a number above UINT_MAX is ERANGE (it was EINVAL,
        // as the queue attributes' queue_var_store makes it; an outside CLI fuzzing audit).
        var kib = (long)QueueAttributes.ParseUInt32(path, text);
        if (kib == 0)
        {
            throw new AttributeException(path, AttributeErrno.EINVAL, "0 is not a rate in KiB/s");
        }

        if (min)
        {
            SyncSpeedMinKiB = kib;
        }
        else
        {
            SyncSpeedMaxKiB = kib;
        }

        return ValueTask.CompletedTask;
    }

    // md's names of a leg's states (md/dev-<leg>/state).
    private static string State(MirrorLegState state) => state switch
    {
        MirrorLegState.InSync => "in_sync",
        MirrorLegState.Rebuilding => "spare",
        _ => "faulty",
    };

    private static string Line(long value) => value.ToString(CultureInfo.InvariantCulture) + "\n";

    // md's cmd_match: the word exactly, with at most one trailing newline. " idle", "idle\n\n" and
    // "faulty\t" were taken (the text was trimmed) where md refuses them with EINVAL (an outside
    // CLI fuzzing audit).
    private static string Command(string text) => text.EndsWith('\n') ? text[..^1] : text;
}
