using ActorBlk.Actors.Tests.Support;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using ActorBlk.Testing;
using Akka.Configuration;
using Xunit;
using Xunit.Abstractions;

namespace ActorBlk.Actors.Tests;

/// <summary>
/// A file device on a disk slower than the removal's drain timeout: the kernel still holds its
/// requests when the drain times out, and a request the kernel holds must not be failed (its
/// buffer would go back to its caller while the kernel still fills it). The disk is made slow for
/// the engine's worker thread alone with the cgroup v1 blkio throttle (1 read per second), so the
/// spec needs root, <c>/sys/fs/cgroup/blkio</c> and a temporary directory on a block device; it
/// is skipped otherwise. An outside slow-disk audit saw reads failed with Offline at the drain
/// timeout, and the kernel's late reads overwrite the buffers their caller had reused.
/// </summary>
public abstract class SlowDiskTeardownSpec : Akka.TestKit.Xunit2.TestKit
{
    private const string BlkioRoot = "/sys/fs/cgroup/blkio";
    private const int Block = 4096;
    private const int Reads = 3;
    private readonly TempDirectory _dir;

    protected SlowDiskTeardownSpec(DispatchMode mode, ITestOutputHelper output)
        : base(ConfigurationFactory.ParseString("actorblk.drain-timeout = 100ms").WithFallback(Configs.Simulated), output: output)
    {
        Mode = mode;
        _dir = new TempDirectory("actorblk-slowdisk");
    }

    protected DispatchMode Mode { get; }

    private BlockLayer Layer => BlockLayer.Get(Sys);

    protected override void AfterAll()
    {
        base.AfterAll();
        _dir.Dispose();
    }

    [SkippableFact]
    public async Task A_removal_past_its_drain_timeout_waits_for_the_reads_the_disk_still_holds()
    {
        var disk = DiskOf(_dir.Path);
        Skip.If(Environment.UserName != "root" || !Directory.Exists(BlkioRoot) || disk is null,
            "needs root, cgroup v1 blkio and a temporary directory on a block device");

        // Unique within the 15 characters of a thread's comm: "actorblk/sdN/psync0".
        var name = Mode == DispatchMode.Ring ? "sdr" : "sdm";
        var device = await Layer.CreateDeviceAsync(new DeviceOptions
        {
            Name = name, Driver = "file", Path = _dir.File("slow.img"), Size = 1 << 20, Engine = Hardware.Drivers.File.IoEngine.Psync,
            Dispatch = Mode, IoTimeoutMs = 60_000,
        });
        using var pattern = new AlignedBuffer(Block);
        pattern.GetSpan().Fill(0xAA);
        for (var i = 0; i < Reads; i++)
        {
            await device.WriteAsync(i * 2L * Block, pattern.Memory);
        }

        var cgroup = Path.Combine(BlkioRoot, $"actorblk-spec-{Guid.NewGuid():N}");
        try
        {
            Directory.CreateDirectory(cgroup);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // A container's cgroup file system is usually mounted read-only.
            Skip.If(true, $"cannot make a blkio cgroup: {e.Message}");
        }

        try
        {
            try
            {
                File.WriteAllText(Path.Combine(cgroup, "blkio.throttle.read_iops_device"), $"{disk} 1");
            }
            catch (IOException e)
            {
                Skip.If(true, $"the blkio throttle refuses {disk}: {e.Message}");
            }

            // Only the engine's worker is slowed: the rest of the test process is not.
            var worker = Directory.EnumerateDirectories("/proc/self/task")
                .Single(t => CommOf(t) == $"actorblk/{name}/ps");
            File.WriteAllText(Path.Combine(cgroup, "tasks"), Path.GetFileName(worker));

            var buffers = new AlignedBuffer[Reads];
            var reads = new Task<BlockStatus>[Reads];
            for (var i = 0; i < Reads; i++)
            {
                buffers[i] = new AlignedBuffer(Block);
                buffers[i].GetSpan().Fill(0x11);
                reads[i] = device.ExecuteAsync(BlockOp.Read, i * 2L * Block, Block, buffers[i].Memory).AsTask();
            }

            // The reads take about a second each; the drain gives up after 100 ms.
            var failed = await Layer.DestroyDeviceAsync(name);

            Assert.Equal(0, failed);
            Assert.All(await Task.WhenAll(reads), status => Assert.Equal(BlockStatus.Ok, status));
            Assert.All(buffers, b => Assert.Equal(-1, b.GetSpan().IndexOfAnyExcept((byte)0xAA)));
            foreach (var buffer in buffers)
            {
                ((IDisposable)buffer).Dispose();
            }
        }
        finally
        {
            File.WriteAllText(Path.Combine(cgroup, "blkio.throttle.read_iops_device"), $"{disk} 0");
            foreach (var task in File.ReadAllLines(Path.Combine(cgroup, "tasks")))
            {
                File.WriteAllText(Path.Combine(BlkioRoot, "tasks"), task);
            }

            Directory.Delete(cgroup);
        }
    }

    // A thread's name as the kernel keeps it (15 characters); empty for a thread that just exited.
    private static string CommOf(string task)
    {
        try
        {
            return File.ReadAllText(Path.Combine(task, "comm")).Trim();
        }
        catch (IOException)
        {
            return string.Empty;
        }
    }

    // The MAJ:MIN of the block device under path (the longest mount point that holds it), or null.
    private static string? DiskOf(string path)
    {
        string? best = null;
        var bestLength = -1;
        foreach (var line in File.ReadLines("/proc/self/mountinfo"))
        {
            var fields = line.Split(' ');
            var mount = fields[4];
            var source = fields[^2];
            if (path.StartsWith(mount, StringComparison.Ordinal) && mount.Length > bestLength && source.StartsWith("/dev/", StringComparison.Ordinal))
            {
                best = fields[2];
                bestLength = mount.Length;
            }
            else if (path.StartsWith(mount, StringComparison.Ordinal) && mount.Length > bestLength)
            {
                best = null;
                bestLength = mount.Length;
            }
        }

        return best is null || best.StartsWith("0:", StringComparison.Ordinal) ? null : best;
    }
}

/// <summary>A slow disk under ring dispatch (the engine ran what it took before the loop exited).</summary>
public sealed class RingSlowDiskTeardownSpec(ITestOutputHelper output) : SlowDiskTeardownSpec(DispatchMode.Ring, output);

/// <summary>A slow disk under mailbox dispatch (the teardown failed the reads the worker still ran).</summary>
public sealed class MailboxSlowDiskTeardownSpec(ITestOutputHelper output) : SlowDiskTeardownSpec(DispatchMode.Mailbox, output);
