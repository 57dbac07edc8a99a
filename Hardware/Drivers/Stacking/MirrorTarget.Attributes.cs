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
        add(md + "sync_action", () => SyncAction + "\n", async (path, text) =>
        {
            switch (text.Trim())
            {
                case "check":
                case "repair":
                    try
                    {
                        _ = text.Trim() == "check" ? CheckAsync() : RepairAsync();
                    }
                    catch (InvalidOperationException ex)
                    {
                        throw new AttributeException(path, AttributeErrno.EBUSY, ex.Message);
                    }

                    break;
                case "idle":
                    CancellationTokenSource? stop;
                    lock (_lock)
                    {
                        stop = _syncAction is "check" or "repair" ? _checkStop : null;
                    }

                    if (stop is not null)
                    {
                        await stop.CancelAsync().ConfigureAwait(false);
                    }

                    break;
                case "recover":
                case "resync":
                    // md's MD_RECOVERY_NEEDED: starts a recovery or resync that has work and is not
                    // running (one that stopped for want of a readable leg); else nothing to do.
                    KickSync();
                    break;
                default:
                    throw new AttributeException(path, AttributeErrno.EINVAL, $"'{text.Trim()}' is not check, repair, recover, resync or idle");
            }
        });
        add(md + "sync_completed", () =>
        {
            var (done, total) = SyncProgress;
            return total == 0 ? "none\n" : $"{done >> Bio.SectorShift} / {total >> Bio.SectorShift}\n";
        }, null);
        add(md + "sync_speed", () => SyncAction == "idle" ? "none\n" : Line(Interlocked.Read(ref _syncSpeedKiB)), null);
        add(md + "sync_speed_min", () => Line(SyncSpeedMinKiB), (path, text) => SetSpeed(path, text, min: true));
        add(md + "sync_speed_max", () => Line(SyncSpeedMaxKiB), (path, text) => SetSpeed(path, text, min: false));
        add(md + "mismatch_cnt", () => Line(MismatchSectors), null);
        add(md + "events", () => Line(Generation), null);
        add(md + "bitmap/chunksize", () => Line(RegionBytes), null);
        for (var i = 0; i < _legs.Length; i++)
        {
            var leg = i;
            var dir = $"{md}dev-{_legs[i].Name}/";
            add(dir + "state", () => LegState(leg) switch
            {
                MirrorLegState.InSync => "in_sync\n",
                MirrorLegState.Rebuilding => "spare\n",
                _ => "faulty\n",
            }, async (path, text) =>
            {
                try
                {
                    switch (text.Trim())
                    {
                        case "faulty":
                            await FailLegAsync(leg).ConfigureAwait(false);
                            break;
                        case "re-add":
                            await ReAddAsync(leg).ConfigureAwait(false);
                            break;
                        default:
                            throw new AttributeException(path, AttributeErrno.EINVAL, $"'{text.Trim()}' is not faulty or re-add");
                    }
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

    private ValueTask SetSpeed(string path, string text, bool min)
    {
        // md's min_sync_store / max_sync_store: kstrtouint, so a decimal up to UINT_MAX with one
        // optional leading '+' and one trailing newline, nothing else (no spaces, '-' or hex); 0 is refused.
        var kib = (long)QueueAttributes.ParseUnsigned(path, text);
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

    private static string Line(long value) => value.ToString(CultureInfo.InvariantCulture) + "\n";
}
