r"""Launch the distilvpr localisation node (camera only, distilled student, place map).

    ros2 launch distilvpr_ros localization.launch.py map_path:=/data/maps/town \
        student_checkpoint:=/models/student
    ros2 launch distilvpr_ros localization.launch.py map_path:=/data/maps/town backend:=onnxruntime \
        student_onnx:=/models/student.onnx place_match_topic:=/initialpose

Parameters come from ``config/localization.yaml`` first, then the launch arguments (later entries win).
String arguments are passed as strings (``ParameterValue(..., value_type=str)``), so an empty path
stays "" instead of becoming YAML null.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

ARGUMENTS = [
    ("namespace", "", "namespace of the node and its topics"),
    ("map_path", "map", "map folder built by the mapping node or `distilvpr build-map`"),
    ("student_checkpoint", "", "camera-student checkpoint folder (torch backend)"),
    ("student_onnx", "", "camera-student ONNX file (onnxruntime backend)"),
    ("backend", "torch", "student inference backend: torch or onnxruntime"),
    ("use_sim_time", "false", "use /clock (bag replay with --clock)"),
    ("camera_topic", "camera/image_raw", "sensor_msgs/Image input"),
    ("place_match_topic", "place_match", "accepted matches (PoseWithCovarianceStamped); e.g. /initialpose"),
    ("loop_closure_topic", "loop_closure", "loop closures [t_query, t_match]; e.g. lio_loop/loop_closure_detection"),
]


def generate_launch_description():
    config = PathJoinSubstitution([FindPackageShare("distilvpr_ros"), "config", "localization.yaml"])
    node = Node(
        package="distilvpr_ros",
        executable="localization_node",
        name="distilvpr_localization",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        emulate_tty=True,
        parameters=[
            config,
            {
                "map.path": ParameterValue(LaunchConfiguration("map_path"), value_type=str),
                "models.student_checkpoint": ParameterValue(LaunchConfiguration("student_checkpoint"), value_type=str),
                "models.student_onnx": ParameterValue(LaunchConfiguration("student_onnx"), value_type=str),
                "models.backend": ParameterValue(LaunchConfiguration("backend"), value_type=str),
                "use_sim_time": ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool),
            },
        ],
        remappings=[
            ("camera/image_raw", LaunchConfiguration("camera_topic")),
            ("camera/image_raw/compressed", [LaunchConfiguration("camera_topic"), "/compressed"]),
            ("place_match", LaunchConfiguration("place_match_topic")),
            ("loop_closure", LaunchConfiguration("loop_closure_topic")),
        ],
    )
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=default, description=desc) for name, default, desc in ARGUMENTS]
        + [node]
    )
