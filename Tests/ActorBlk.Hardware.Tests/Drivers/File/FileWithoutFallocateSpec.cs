using System.Diagnostics;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers.File;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using ActorBlk.Hardware.Topology;
using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Hardware.Tests.Drivers.File;

/// <summary>
/// A file device on a file system without fallocate (ramfs: no zero-range, no punch-hole). A
/// write-zeroes still zeroes its range, by writing zeroes, as the kernel's
/// <c>blkdev_issue_zeroout</c> falls back to writing zero pages; only one marked
/// <see cref="RequestFlags.NoFallback"/> (NBD's FAST_ZERO) fails with
/// <see cref="BlockStatus.NotSupported"/>, changing nothing. Found by an outside audit: every
/// write-zeroes failed NotSupported there, and the NBD server answered a plain
/// <c>NBD_CMD_WRITE_ZEROES</c> with <c>NBD_ENOTSUP</c> while advertising
/// <c>NBD_FLAG_SEND_FAST_ZERO</c>, which the protocol forbids. Needs root to mount the ramfs;
/// skipped otherwise.
/// </summary>
public sealed class FileWithoutFallocateSpec : IAsyncLifetime
{
    private readonly TempDirectory _dir = new("actorblk-ramfs");
    private readonly BlockSoftIrq _softIrq = new(2);
    private readonly List<BlockDevice> _devices = [];
    private string? _skip;

    public Task InitializeAsync()
    {
        if (!OperatingSystem.IsLinux() || Environment.UserName != "root")
        {
            _skip = "mounting a ramfs needs Linux and root";
            return Task.CompletedTask;
        }

        // A container that refuses the mount (no CAP_SYS_ADMIN), or has no mount(8), skips.
        var (code, output) = Run("mount", "-t", "ramfs", "ramfs", _dir.Path);
        if (code != 0)
        {
            _skip = $"mount -t ramfs failed ({code}): {output}";
        }

        return Task.CompletedTask;
    }

    public async Task DisposeAsync()
    {
        try
        {
            foreach (var device in _devices)
            {
                await device.DisposeAsync();
            }
        }
        finally
        {
            // Whatever the devices did, the ramfs goes: detached lazily if something still holds
            // it, never left mounted under the temp directory; a mount that stays is a failure.
            var (code, output) = (0, "");
            if (_skip is null && Run("umount", _dir.Path).Code != 0)
            {
                (code, output) = Run("umount", "-l", _dir.Path);
            }

            _softIrq.Dispose();
            _dir.Dispose();
            Assert.True(code == 0, $"umount -l {_dir.Path} failed ({code}): {output}");
        }
    }

    [SkippableTheory]
    [InlineData(IoEngine.IoUring)]
    [InlineData(IoEngine.Psync)]
    public async Task Write_zeroes_writes_zeroes_and_only_no_fallback_fails_not_supported(IoEngine engine)
    {
        Skip.If(_skip is not null, _skip);
        var device = DeviceBuilder.CreateRingDevice(
            new DeviceOptions
            {
                Name = "ram0",
                Driver = "file",
                Path = _dir.File($"{engine}.img"),
                Size = 4 << 20,
                Engine = engine,
                Direct = false,
                SubmitQueues = 1,
                HwQueueDepth = 8,
            },
            CpuTopology.Simulated(2),
            _softIrq);
        _devices.Add(device);
        var data = new byte[3 << 20];
        new Random(5).NextBytes(data);
        await device.WriteAsync(0, data);

        // FAST_ZERO: refused at once, the data untouched.
        Assert.Equal(BlockStatus.NotSupported,
            await device.ExecuteAsync(BlockOp.WriteZeroes, 4096, 8192, default, RequestFlags.NoFallback));

        // A plain write-zeroes larger than the fallback's 1 MiB buffer, and a provisioned one.
        await device.WriteZeroesAsync(8192, (2 << 20) + 4096);
        Assert.Equal(BlockStatus.Ok, await device.ExecuteAsync(BlockOp.WriteZeroes, 512, 1024, default, RequestFlags.NoUnmap));

        var back = new byte[3 << 20];
        await device.ReadAsync(0, back);
        var expected = (byte[])data.Clone();
        Array.Clear(expected, 8192, (2 << 20) + 4096);
        Array.Clear(expected, 512, 1024);
        Assert.Equal(expected, back);

        // Punch and zero range were each refused once, by the first write-zeroes, and not asked
        // for again (it used to be two refused fallocate calls per write-zeroes, three through
        // io_uring).
        Assert.Equal(2, Assert.IsType<FileBlockDriver>(device.Queue.Driver).ZeroModeRefusals);
    }

    private static (int Code, string Output) Run(string file, params string[] arguments)
    {
        var start = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var argument in arguments)
        {
            start.ArgumentList.Add(argument);
        }

        Process process;
        try
        {
            process = Process.Start(start)!;
        }
        catch (System.ComponentModel.Win32Exception ex)
        {
            return (-1, $"{file}: {ex.Message}");
        }

        using (process)
        {
            var output = process.StandardOutput.ReadToEnd() + process.StandardError.ReadToEnd();
            process.WaitForExit();
            return (process.ExitCode, output.Trim());
        }
    }
}
